"""The LightningModule: a MONAI backbone, the uncertainty-aware loss, and selective evaluation.

It computes and writes no files (as in lightning-hydra-template): the test report is written by
:class:`uaseg.callbacks.SelectiveReportWriter` from what ``test_step`` returns and from
``test_result``. Everything it needs comes through the constructor as plain dicts (``net``, ``loss``,
``optimizer``, ``inferer``, ``evaluation``, and from the runner ``dataset`` -- the resolved dataset
config that prediction preprocesses new images with -- and ``run_identity``), which Lightning saves
as hyper-parameters, so ``SelectiveSegModule.load_from_checkpoint(path, weights_only=True)`` rebuilds
the whole model from the checkpoint alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from monai.data import MetaTensor
from omegaconf import DictConfig, OmegaConf

from uaseg.errors import ConfigError
from uaseg.selective import SelectiveResult, SelectiveSegmentationMetric, ThresholdGrid

#: keys of the ``eval`` config the module itself uses (the report writer reads the others)
EVAL_KEYS = ("coverages", "quantize_bits", "case_aggregation", "bootstrap")


def plain_config(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def as_tensor(x: Any) -> torch.Tensor:
    """MONAI MetaTensor -> plain tensor: metadata tracking slows every op of a training step."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


@dataclass
class CaseOutput:
    """One evaluated case, as ``test_step`` hands it to callbacks (tensors on the module's device)."""

    case_id: str
    group: str
    uncertainty: torch.Tensor  # (*spatial) float, 1 - max softmax
    prediction: torch.Tensor  # (*spatial) int64
    label: torch.Tensor  # (*spatial) int64


class SelectiveSegModule(L.LightningModule):
    def __init__(
        self,
        net: dict,
        loss: dict,
        optimizer: dict,
        inferer: dict,
        evaluation: dict,
        scheduler: dict | None = None,
        dataset: dict | None = None,
        run_identity: dict | None = None,
    ) -> None:
        super().__init__()
        net, loss, optimizer, inferer, evaluation, scheduler, dataset, run_identity = map(
            plain_config, (net, loss, optimizer, inferer, evaluation, scheduler, dataset, run_identity)
        )
        missing = [k for k in EVAL_KEYS if k not in (evaluation or {})]
        if missing:
            raise ConfigError(f"the evaluation config lacks {missing} (see conf/eval/default.yaml)")
        self.save_hyperparameters(
            {"net": net, "loss": loss, "optimizer": optimizer, "inferer": inferer, "evaluation": evaluation,
             "scheduler": scheduler, "dataset": dataset, "run_identity": run_identity}
        )
        self.net = instantiate(net)
        self.loss = instantiate(loss)
        self.inferer = instantiate(inferer)
        self.num_classes = int(net["out_channels"])
        metric_args = dict(
            num_classes=self.num_classes,
            coverages=tuple(evaluation["coverages"]),
            quantize_bits=evaluation["quantize_bits"],
            case_aggregation=evaluation["case_aggregation"],
        )
        # validation runs every epoch: no bootstrap there
        self.val_metric = SelectiveSegmentationMetric(bootstrap=0, **metric_args)
        self.test_metric = SelectiveSegmentationMetric(bootstrap=evaluation["bootstrap"], **metric_args)
        #: coverage -> threshold of the last validation, kept in checkpoints for prediction
        self.val_curve: ThresholdGrid | None = None
        #: the last test's result, read by the report writer
        self.test_result: SelectiveResult | None = None

    @property
    def dataset_cfg(self) -> dict | None:
        """The resolved ``dataset`` config of training: prediction preprocesses new images with it."""
        return self.hparams.get("dataset")

    @property
    def run_identity(self) -> dict:
        return self.hparams.get("run_identity") or {}

    # ------------------------------------------------------------------ training
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.net(as_tensor(batch["image"]))
        total, parts = self.loss(logits, as_tensor(batch["label"]), epoch=self.current_epoch)
        if not torch.isfinite(total):
            cases = sorted({str(c) for c in batch.get("case_id") or ()})  # the runner adds the checkpoint
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at epoch {self.current_epoch}, "
                f"global step {self.global_step} (parts: {({k: float(v) for k, v in parts.items()})})"
                + (f", batch of cases {', '.join(cases)}" if cases else "")
            )
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.float() for k, v in parts.items()}, batch_size=bs)
        return total

    def configure_optimizers(self) -> Any:
        opt_cfg = dict(self.hparams.optimizer)
        opt_cfg.pop("_partial_", None)
        optimizer = instantiate(opt_cfg, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        sched_cfg = dict(self.hparams.scheduler)
        interval = sched_cfg.pop("interval", "epoch")
        sched_cfg.pop("_partial_", None)
        scheduler = instantiate(sched_cfg, optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # ------------------------------------------------------------------ whole-image inference
    @torch.no_grad()
    def segment(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sliding-window inference -> (uncertainty, prediction, probabilities) per voxel."""
        logits = self.inferer(image, self.net)
        prob = as_tensor(logits).float().softmax(dim=1)
        confidence, prediction = prob.max(dim=1)
        return 1.0 - confidence, prediction, prob

    def _evaluate(self, batch: dict, metric: SelectiveSegmentationMetric) -> list[CaseOutput]:
        uncertainty, prediction, _ = self.segment(as_tensor(batch["image"]))
        label = as_tensor(batch["label"])[:, 0].long()
        groups = batch.get("group") or ["test"] * label.shape[0]
        out = []
        for i, case_id in enumerate(batch["case_id"]):
            case = CaseOutput(str(case_id), str(groups[i]), uncertainty[i], prediction[i], label[i])
            metric.update(case.uncertainty, case.prediction, case.label, case_id=case.case_id, group=case.group)
            out.append(case)
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metric.compute()
        self.val_metric.reset()
        self.log_dict(
            {"val/dice": result.dice_full.mean, "val/aurc_dice": result.aurc_dice, "val/aurc": result.aurc},
            prog_bar=True,
        )
        self.val_curve = result.threshold_grid

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain Python types only, so prediction loads checkpoints with torch.load(weights_only=True)
        if self.val_curve is not None:
            checkpoint["uaseg_val_curve"] = self.val_curve.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        curve = checkpoint.get("uaseg_val_curve")
        self.val_curve = ThresholdGrid.from_dict(curve) if curve else None

    # ------------------------------------------------------------------ test
    def test_step(self, batch: dict, batch_idx: int) -> list[CaseOutput]:
        return self._evaluate(batch, self.test_metric)

    def on_test_epoch_end(self) -> None:
        result = self.test_metric.compute()
        self.test_metric.reset()
        scalars = {
            "test/aurc_dice": result.aurc_dice,
            "test/aurc": result.aurc,
            "test/eaurc": result.eaurc,
            "test/augrc": result.augrc,
            "test/dice": result.dice_full.mean,
            "test/dice_p5": result.dice_full.p5,
        }
        for cov, point in result.at_coverage.items():
            scalars[f"test/dice@{cov}"] = point.dice_mean
            scalars[f"test/dice_p5@{cov}"] = point.dice_p5
        self.log_dict({k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)})
        self.test_result = result
