"""Train and test a selective-segmentation model: ``python train.py [overrides]`` (see README)."""

import hydra
from omegaconf import DictConfig

from uaseg.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    # the value a Hydra sweeper (e.g. Optuna) minimises
    return metrics.get(cfg.optimized_metric, metrics.get("val/aurc_dice"))


if __name__ == "__main__":
    main()
