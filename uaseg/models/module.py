"""The LightningModule: a MONAI backbone, the uncertainty-aware loss, and selective evaluation.

The module is built from plain config dicts (``net``, ``loss``, ``optimizer``, ``inferer``,
``evaluation``) which Lightning stores in the checkpoint, so ``SelectiveSegModule.load_from_checkpoint``
rebuilds the whole model from the checkpoint alone.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from monai.data import MetaTensor
from omegaconf import DictConfig, OmegaConf

from uaseg.loggers import log_test_report
from uaseg.selective import (
    SelectiveSegmentationMetric,
    format_table,
    plot_case_panel,
    plot_dice_coverage,
    plot_risk_coverage,
    save_case_arrays,
    write_outputs,
)

log = logging.getLogger(__name__)

DEFAULT_EVAL = {
    "coverages": [0.95, 0.90, 0.80, 0.70],
    "quantize_bits": None,
    "case_aggregation": "mean",
    "bootstrap": 1000,
    "save_arrays": False,
    "export": False,
    "panel_coverage": 0.9,
    "figures": True,
}


def plain_config(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _tensor(x: Any) -> torch.Tensor:
    """MONAI MetaTensor -> plain tensor: metadata tracking slows every op of a training step."""
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class SelectiveSegModule(L.LightningModule):
    def __init__(
        self,
        net: dict,
        loss: dict,
        optimizer: dict,
        inferer: dict,
        evaluation: dict | None = None,
        scheduler: dict | None = None,
    ) -> None:
        super().__init__()
        net, loss, optimizer, inferer, evaluation, scheduler = map(
            plain_config, (net, loss, optimizer, inferer, evaluation, scheduler)
        )
        self.save_hyperparameters(
            {"net": net, "loss": loss, "optimizer": optimizer, "inferer": inferer,
             "evaluation": evaluation, "scheduler": scheduler}
        )
        self.net = instantiate(net)
        self.loss = instantiate(loss)
        self.inferer = instantiate(inferer)
        self.eval_cfg = {**DEFAULT_EVAL, **(evaluation or {})}
        self.num_classes = int(net["out_channels"])
        metric_args = dict(
            num_classes=self.num_classes,
            coverages=tuple(self.eval_cfg["coverages"]),
            quantize_bits=self.eval_cfg["quantize_bits"],
            case_aggregation=self.eval_cfg["case_aggregation"],
        )
        # validation runs every epoch: no bootstrap there
        self.val_metric = SelectiveSegmentationMetric(bootstrap=0, **metric_args)
        self.test_metric = SelectiveSegmentationMetric(bootstrap=self.eval_cfg["bootstrap"], **metric_args)
        #: run identity written into summary.json (dataset, fold, seed, ...); set by the runner
        self.run_identity: dict[str, Any] = {}
        self._panels: dict[str, dict] = {}

    # ------------------------------------------------------------------ training
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.net(_tensor(batch["image"]))
        total, parts = self.loss(logits, _tensor(batch["label"]), epoch=self.current_epoch)
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at epoch {self.current_epoch}, "
                f"global step {self.global_step} (parts: {({k: float(v) for k, v in parts.items()})}); "
                "the last good checkpoint is kept in the run folder"
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
        prob = _tensor(logits).float().softmax(dim=1)
        confidence, prediction = prob.max(dim=1)
        return 1.0 - confidence, prediction, prob

    def _evaluate(self, batch: dict, metric: SelectiveSegmentationMetric) -> list[tuple]:
        uncertainty, prediction, _ = self.segment(_tensor(batch["image"]))
        label = _tensor(batch["label"])[:, 0].long()
        groups = batch.get("group") or ["test"] * label.shape[0]
        out = []
        for i, case_id in enumerate(batch["case_id"]):
            metric.update(uncertainty[i], prediction[i], label[i], case_id=str(case_id), group=str(groups[i]))
            out.append((str(case_id), str(groups[i]), uncertainty[i], prediction[i], label[i]))
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        result = self.val_metric.compute()
        self.val_metric.reset()
        self.log_dict(
            {
                "val/dice": float(result["dice_full"]["mean"]),
                "val/aurc_dice": float(result["aurc_dice"]),
                "val/aurc": float(result["aurc"]),
            },
            prog_bar=True,
        )
        # kept with the checkpoint so predict.py maps a coverage to the threshold seen in validation
        self.val_curve = {k: result["threshold_grid"][k].tolist() for k in ("coverage", "threshold")}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain Python types only, so predict.py can load checkpoints with torch.load(weights_only=True)
        if getattr(self, "val_curve", None) is not None:
            checkpoint["uaseg_val_curve"] = {k: [float(v) for v in vals] for k, vals in self.val_curve.items()}
        # the resolved `dataset` config (set by the runner): predict.py preprocesses new images with it
        if getattr(self, "dataset_cfg", None) is not None:
            checkpoint["uaseg_dataset"] = plain_config(self.dataset_cfg)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.val_curve = checkpoint.get("uaseg_val_curve")
        self.dataset_cfg = checkpoint.get("uaseg_dataset")

    # ------------------------------------------------------------------ test: the selective report
    @property
    def output_dir(self) -> Path:
        return Path(self.trainer.default_root_dir)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        cases = self._evaluate(batch, self.test_metric)
        if self.eval_cfg["export"]:
            self._export_original_grid(batch, cases)
        for case_id, group, u, pred, label in cases:
            if self.eval_cfg["save_arrays"]:
                save_case_arrays(self.output_dir, case_id, u.cpu().numpy(), pred.cpu().numpy(), label.cpu().numpy())
            if self.eval_cfg["figures"] and group not in self._panels:  # first case of each group
                image = batch["image"][0].detach().cpu().float().numpy()
                self._panels[group] = dict(
                    case_id=case_id, image=image, label=label.cpu().numpy(),
                    prediction=pred.cpu().numpy(), uncertainty=u.cpu().numpy(),
                )

    def _export_original_grid(self, batch: dict, cases: list[tuple]) -> None:
        """``predictions/<case>_{seg,uncertainty}`` resampled back onto each case's original file
        grid and header (NIfTI; PNG for 2-D), to open over the image in 3D Slicer / ITK-SNAP."""
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "invert_to_original"):
            if not getattr(self, "_export_warned", False):
                log.warning("eval.export: %s has no original files to export onto", type(datamodule).__name__)
                self._export_warned = True
            return
        from uaseg.predict import save_nifti_like, save_png

        seg = datamodule.invert_to_original(torch.stack([c[3] for c in cases])[:, None].float(), batch, nearest=True)
        unc = datamodule.invert_to_original(torch.stack([c[2] for c in cases])[:, None].float(), batch)
        sources = batch["image"].meta["filename_or_obj"]
        folder = self.output_dir / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        for (case_id, *_), s, u, source in zip(cases, seg, unc, sources):
            s = torch.as_tensor(s)[0].round().cpu().numpy().astype(np.uint8)
            u = torch.as_tensor(u)[0].float().cpu().numpy()
            if s.ndim == 3:
                import nibabel as nib

                reference = nib.load(str(source))
                save_nifti_like(s, reference, folder / f"{case_id}_seg.nii.gz", np.uint8, "uaseg segmentation")
                save_nifti_like(u, reference, folder / f"{case_id}_uncertainty.nii.gz", np.float32, "uaseg 1-max softmax")
            else:  # MONAI reads 2-D images as (width, height)
                save_png(s.T, folder / f"{case_id}_seg.png")
                save_png(np.round(np.clip(u.T, 0, 1) * 65535).astype(np.uint16), folder / f"{case_id}_uncertainty.png")

    def on_test_epoch_end(self) -> None:
        result = self.test_metric.compute()
        self.test_metric.reset()
        scalars = {
            "test/aurc_dice": result["aurc_dice"],
            "test/aurc": result["aurc"],
            "test/eaurc": result["eaurc"],
            "test/augrc": result["augrc"],
            "test/dice": result["dice_full"]["mean"],
            "test/dice_p5": result["dice_full"]["p5"],
        }
        for cov, row in result["at_coverage"].items():
            scalars[f"test/dice@{cov}"] = row["dice_mean"]
            scalars[f"test/dice_p5@{cov}"] = row["dice_p5"]
        self.log_dict({k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)})
        if self.trainer.is_global_zero:
            self._write_report(result)
        self._panels = {}

    def _write_report(self, result: dict) -> None:
        out = self.output_dir
        write_outputs(result, out, self.run_identity)
        figures = {}
        if self.eval_cfg["figures"]:
            fig_dir = out / "figures"
            fig_dir.mkdir(parents=True, exist_ok=True)
            figures["risk_coverage"] = plot_risk_coverage(result, fig_dir / "risk_coverage.png")
            figures["dice_coverage"] = plot_dice_coverage(result, fig_dir / "dice_coverage.png")
            threshold = _threshold_at(result, self.eval_cfg["panel_coverage"])
            for group, p in self._panels.items():
                figures[f"case_{group}"] = plot_case_panel(
                    p["image"], p["label"], p["prediction"], p["uncertainty"], threshold,
                    fig_dir / f"case_{group}_{p['case_id']}.png",
                    title=f"{p['case_id']} ({group}), referral at coverage {self.eval_cfg['panel_coverage']}",
                )
        log_test_report(self.loggers, result, figures, step=self.global_step)
        print(format_table(result))
        log.info("selective test report written to %s", out)


def _threshold_at(result: dict, coverage: float) -> float:
    """Threshold whose achievable coverage is nearest to ``coverage`` (0.1% grid)."""
    grid = result["threshold_grid"]
    return float(grid["threshold"][int(np.abs(grid["coverage"] - coverage).argmin())])
