"""The ``python predict.py`` command: parse the options and segment the inputs with
:func:`uaseg.inference.predict_files` (what is written, and how the threshold is chosen, is
documented there); its ``--help`` (the options of ``conf/predict.yaml`` with their comments, not
Hydra's list of the training config groups) and ``uaseg predict -i IN -o OUT -m RUN`` (nnU-Net's
habit), which fills the same config and calls the same :func:`main`. Nothing here imports torch
before it is needed."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from uaseg.config.check import check_config
from uaseg.errors import ConfigError, PredictError

USAGE = ("python predict.py ckpt=<checkpoint> input=<file or folder> output=<folder> coverage=<0..1> "
         "(or threshold=<u>, or risk=<alpha> [risk_kind=dice|structure|tail@b|fnr] with a calibrated checkpoint)")


def main(cfg: Any) -> list[dict]:
    """Entry point of ``python predict.py`` (a Hydra ``DictConfig`` with the keys of conf/predict.yaml)."""
    missing = [k for k in ("ckpt", "input", "output") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise PredictError(f"missing {', '.join(f'{k}=' for k in missing)}; usage: {USAGE}")
    try:
        check_config(cfg)  # every option in its domain (coverage, threshold, overwrite, ...) before any work
    except ConfigError as e:
        raise PredictError(str(e)) from None
    from uaseg.inference import predict_files

    inputs = OmegaConf.to_container(cfg.input) if OmegaConf.is_config(cfg.input) else cfg.input
    return predict_files(
        cfg.ckpt,
        inputs,
        cfg.output,
        coverage=cfg.get("coverage"),
        threshold=cfg.get("threshold"),
        overwrite=cfg.get("overwrite", False),
        device=cfg.get("device", "cpu"),
        trust_checkpoint=cfg.get("trust_checkpoint", False),
        risk=cfg.get("risk"),
        risk_method=cfg.get("risk_method"),
        risk_kind=cfg.get("risk_kind"),
        score=cfg.get("score", "max_softmax"),
    )


CONFIG = Path(__file__).resolve().parents[1] / "conf" / "predict.yaml"
_KEY_LINE = re.compile(r"^([a-z_]+):\s*(.*?)\s*(?:#\s*(.*))?$")


def predict_options() -> list[tuple[str, str, str]]:
    """(key, default, comment) of every option of ``conf/predict.yaml``, in file order."""
    out = []
    for line in CONFIG.read_text().splitlines():
        m = _KEY_LINE.match(line)
        if m and m.group(1) not in ("defaults", "hydra"):
            out.append((m.group(1), m.group(2), m.group(3) or ""))
    return out


def predict_help() -> str:
    """``python predict.py --help``."""
    import textwrap

    lines = ["python predict.py: segment new images with a trained checkpoint and refer the uncertain voxels",
             "", "usage:",
             "  python predict.py ckpt=<run folder> input=<file or folder> output=<folder> coverage=0.9",
             "  uaseg predict -m <run folder> -i <file or folder> -o <folder> --coverage 0.9   (the same)",
             "", "options (key=value; ??? = required; give exactly one of coverage, threshold, risk):"]
    for key, default, comment in predict_options():
        head = f"  {key}={default}"
        body = textwrap.wrap(comment, 100 - 26) or [""]
        lines.append(f"{head:<26}{body[0]}" if len(head) < 26 else f"{head}\n{'':26}{body[0]}")
        lines += [f"{'':26}{b}" for b in body[1:]]
    lines += ["", "Outputs per input and every option in detail: docs/prediction.md"]
    return "\n".join(lines)


def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--input", required=True, nargs="+", metavar="IN",
                   help="image files or folders (NIfTI, or PNG/BMP/JPG/TIF for 2-D models)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for the outputs (created if missing)")
    p.add_argument("-m", "--model", required=True, metavar="RUN",
                   help="a run folder (the checkpoint it tested) or a checkpoint file")
    p.add_argument("--coverage", type=float, help="fraction of voxels the network keeps, in (0, 1]")
    p.add_argument("--threshold", type=float, help="OR refer voxels with uncertainty u > this")
    p.add_argument("--risk", type=float, help="OR a risk level alpha calibrated with a guarantee (uaseg calibrate)")
    p.add_argument("--risk-method", choices=("crc", "ltt"), help="which calibration, when the checkpoint holds both")
    p.add_argument("--risk-kind", help="dice (default) | structure | tail@<beta> | fnr")
    p.add_argument("--score", default="max_softmax", help="the uncertainty score (default max_softmax)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint naming classes uaseg does not configure (only files you trust)")


def run_predict(args) -> int:
    """Exit 0 when every input was segmented, 2 on a user error (one line), as ``predict.py``."""
    import logging

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIG)
    for key in ("defaults", "hydra"):
        cfg.pop(key, None)
    values = {"ckpt": args.model, "input": args.input[0] if len(args.input) == 1 else list(args.input),
              "output": args.output, "coverage": args.coverage, "threshold": args.threshold, "risk": args.risk,
              "risk_method": args.risk_method, "risk_kind": args.risk_kind, "score": args.score,
              "device": args.device, "overwrite": args.overwrite, "trust_checkpoint": args.trust_checkpoint}
    cfg = OmegaConf.merge(cfg, values)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    from uaseg.errors import UserError
    from uaseg.io import WriteError

    try:
        records = main(cfg)
    except (UserError, FileExistsError, FileNotFoundError, WriteError) as e:
        print(f"uaseg predict: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(records)} case(s) written to {cfg.output}")
    return 0
