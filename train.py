"""Train and test a selective-segmentation model: ``python train.py [overrides]`` (see README)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import uaseg.config.resolvers  # noqa: F401  (${uaseg.*} resolvers of the run folder; torch is imported later)
from uaseg.config.overrides import quote_hint


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from uaseg.train import USER_ERRORS, train  # after the run folder was checked: a refusal is quick

    try:
        metrics = train(cfg)
    except USER_ERRORS as e:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # recorded as this job's failure; the other jobs go on
        logging.getLogger("uaseg").error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    # the value a Hydra sweeper (e.g. Optuna) minimises
    return metrics.get(cfg.optimized_metric, metrics.get("val/aurc_dice"))


if __name__ == "__main__":
    hint = quote_hint(sys.argv[1:])
    if hint:
        print(f"ConfigError: {hint}", file=sys.stderr)
        sys.exit(1)
    main()
