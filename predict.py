"""Segment new images with a trained checkpoint, referring uncertain voxels (see uaseg/inference/):

    python predict.py ckpt=<run>/checkpoints/last.ckpt input=<folder or file> output=<folder> coverage=0.9
    python predict.py ckpt=... input=... output=... threshold=0.23 [overwrite=true] [device=cuda]
    python predict.py --help     # every option (``uaseg predict -i IN -o OUT -m RUN`` is the same)
"""

import sys

import hydra
from omegaconf import DictConfig

from uaseg.config.overrides import quote_hint


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from uaseg.errors import UserError
    from uaseg.io import WriteError
    from uaseg.predict import main as predict

    try:
        records = predict(cfg)
    except (UserError, FileExistsError, FileNotFoundError, WriteError) as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(records)} case(s) written to {cfg.output}")


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):  # predict's own options, not Hydra's list of training groups
        from uaseg.predict import predict_help

        print(predict_help())
        sys.exit(0)
    hint = quote_hint(sys.argv[1:])
    if hint:
        print(f"predict.py: error: {hint}", file=sys.stderr)
        sys.exit(2)
    main()
