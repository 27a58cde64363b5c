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

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from uaseg.data.base import as_tensor
from uaseg.errors import ConfigError
from uaseg.losses.schedule import DominanceWarning, logs_this_step, training_progress
from uaseg.losses.variants import second_view_logits
from uaseg.models.testing import TestScoring
from uaseg.selective import SelectiveResult, SelectiveSegmentationMetric, ThresholdGrid
from uaseg.shift.evaluate import shift_evaluation
from uaseg.shift.referral import drift_record
from uaseg.uncertainty import check_scores, deterministic_scores
from uaseg.uncertainty.confidnet import HEAD_KEY, ConfidenceHead, WithConfidence
from uaseg.uncertainty.tta import flip_sets

log = logging.getLogger(__name__)

#: keys of the ``eval`` config the module itself uses (the report writer reads the others)
EVAL_KEYS = ("coverages", "quantize_bits", "case_aggregation", "bootstrap", "scores", "tta_flips", "mc_samples")
#: checkpoint key of the calibrated referral thresholds (plain dicts: ``uaseg.stages.risk_calibration``)
RISK_CONTROL_KEY = "uaseg_risk_control"
#: checkpoint key of the validation curves of the other one-pass scores (``predict.py score=margin coverage=...``)
VAL_CURVES_KEY = "uaseg_val_curves"
#: checkpoint key of the validation cases' case scores, the drift range of prediction (``uaseg.shift.referral``)
CASE_SCORES_KEY = "uaseg_case_scores"
#: the one-pass scores prediction can refer by (tcp: with a ConfidNet head)
PREDICT_SCORES = ("max_softmax", "entropy", "margin", "logit_margin", "doctor", "max_logit", "energy", "tcp")


def plain_config(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def ignore_label_of(dataset: dict | None, loss: dict | None) -> int | None:
    """The dataset's ignore label (``dataset.meta.ignore_label``: nnU-Net's ``"ignore"``), which the
    loss must ignore too (``loss.ignore_index`` follows it by default); a loss that does not is a
    :class:`ConfigError` naming the key."""
    ignore = ((dataset or {}).get("meta") or {}).get("ignore_label")
    if ignore is None:
        return None
    if (loss or {}).get("ignore_index") != ignore:
        raise ConfigError(f"loss.ignore_index={(loss or {}).get('ignore_index')}: the dataset's labels mark "
                          f"unannotated voxels with the ignore label {ignore}, which the loss must ignore "
                          f"(leave loss.ignore_index to its default or set it to {ignore})")
    return int(ignore)


class SelectiveSegModule(TestScoring, L.LightningModule):
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
        self.dominance_warning = DominanceWarning(self.num_classes)
        #: nnU-Net's ignore label (unannotated voxels: no loss, no metric), from the dataset's meta
        self.ignore_label = ignore_label_of(dataset, loss)
        metric_args = dict(
            num_classes=self.num_classes,
            coverages=tuple(evaluation["coverages"]),
            quantize_bits=evaluation["quantize_bits"],
            case_aggregation=evaluation["case_aggregation"],
            ignore_index=self.ignore_label,
        )
        # validation runs every epoch: no bootstrap there, and the one-pass score
        self.val_metric = SelectiveSegmentationMetric(bootstrap=0, **metric_args)
        #: test-time uncertainty scores, each with its own full evaluation (the first is the main one)
        self.scores = check_scores(evaluation["scores"])
        self.test_metrics = nn.ModuleDict(
            {name: SelectiveSegmentationMetric(bootstrap=evaluation["bootstrap"], **metric_args) for name in self.scores}
        )
        self.tta_flips = flip_sets(int(net.get("spatial_dims", 2)), evaluation["tta_flips"])
        self.mc_samples = int(evaluation["mc_samples"])
        if "mc" in self._families() and self.mc_samples < 1:
            raise ConfigError(f"eval.mc_samples={self.mc_samples} must be >= 1")
        #: coverage -> threshold of the last validation, kept in checkpoints for prediction
        self.val_curve: ThresholdGrid | None = None
        #: temperature of the ``temperature`` score, fitted on validation cases after training
        self.temperature: float | None = None
        #: the last test's results per score (``test_result``: the main one) and what each cost
        self.test_results: dict[str, SelectiveResult] = {}
        self.test_result: SelectiveResult | None = None
        self.test_costs: dict[str, dict[str, float]] = {}
        self._family_time: dict[str, float] = {}
        self._test_cases = 0
        #: calibrated referral thresholds loaded from the checkpoint (evaluated at test)
        self.risk_calibration: dict | None = None
        #: the ``tcp`` score's ConfidNet head with its cost and validation curve (a plain dict, so the
        #: head is no submodule: the segmenter's state_dict, and checkpoints without a head, stay as they are)
        self.confidence: dict | None = None
        #: score -> validation ThresholdGrid of the one-pass scores other than max_softmax and tcp
        self.val_curves: dict[str, ThresholdGrid] = {}
        #: the shift testbed (``eval.shift``; None: off), its last report, and the last validation's case scores
        self.shift = shift_evaluation(evaluation, net, self.num_classes, self.ignore_label)
        self.shift_report: dict | None = None
        self.case_scores: dict | None = None

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, trust_checkpoint: bool = False, **kwargs):
        """Lightning's, after :func:`uaseg.runs.trust.check_checkpoint_file`: the stored hyper-parameters
        are instantiated, so a file naming any other class is refused unless ``trust_checkpoint``."""
        from uaseg.runs.trust import check_checkpoint_file

        check_checkpoint_file(checkpoint_path, trust=trust_checkpoint)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

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
        image = as_tensor(batch["image"])
        logits = self.net(image)
        view = None
        if getattr(self.loss, "needs_view", None) and self.loss.needs_view(self.current_epoch):
            view = second_view_logits(self.net, image, self.loss.consistency_view)
        total, parts = self.loss(logits, as_tensor(batch["label"]), epoch=training_progress(self._trainer, self.current_epoch, batch_idx),
                                 view_logits=view, measure=logs_this_step(self._trainer))
        if not torch.isfinite(total):
            cases = sorted({str(c) for c in batch.get("case_id") or ()})  # the runner adds the checkpoint
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at epoch {self.current_epoch}, "
                f"global step {self.global_step} (parts: {({k: float(v) for k, v in parts.items()})})"
                + (f", batch of cases {', '.join(cases)}" if cases else "")
            )
        self.dominance_warning(parts.get("grad_ratio"), self.current_epoch)
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
    def segment(self, image: torch.Tensor, score: str = "max_softmax") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sliding-window inference -> (uncertainty, prediction, probabilities) per voxel; ``score``:
        ``max_softmax`` (u = 1 - max softmax), another one-pass score of :data:`PREDICT_SCORES`, or
        ``tcp`` (u = 1 - the ConfidNet head's p_true)."""
        if score == "tcp":
            logits, u = self._tcp_pass(image)
            prob = logits.float().softmax(dim=1)
            return u, prob.argmax(dim=1), prob
        if score not in PREDICT_SCORES:
            raise ConfigError(f"score={score!r}: prediction refers by one of {list(PREDICT_SCORES)}")
        logits = self.inferer(image, self.net)
        if score != "max_softmax":
            u, prediction = deterministic_scores(as_tensor(logits), None)[score]
            return u, prediction, as_tensor(logits).float().softmax(dim=1)
        prob = as_tensor(logits).float().softmax(dim=1)
        confidence, prediction = prob.max(dim=1)
        return 1.0 - confidence, prediction, prob

    def set_confidence_head(self, head: ConfidenceHead, info: dict, val_curve: ThresholdGrid | None = None) -> None:
        self.confidence = {"head": head.eval(), "info": dict(info), "val_curve": val_curve}

    def _tcp_pass(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass of network + head: ``(logits, u = 1 - predicted p_true)``."""
        if not self.confidence:
            raise ConfigError("the score 'tcp' needs a ConfidNet head: train with confidence_head=tcp "
                              "(or test a checkpoint that holds one)")
        head = self.confidence["head"].to(image.device)
        out = as_tensor(self.inferer(image, WithConfidence(self.net, head)))
        return out[:, : self.num_classes], (1.0 - out[:, self.num_classes].float()).clamp(0.0, 1.0)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        uncertainty, prediction, _ = self.segment(as_tensor(batch["image"]))
        label = as_tensor(batch["label"])[:, 0].long()
        groups = batch.get("group") or ["test"] * label.shape[0]
        for i, case_id in enumerate(batch["case_id"]):
            self.val_metric.update(uncertainty[i], prediction[i], label[i], case_id=str(case_id), group=str(groups[i]))

    def on_validation_epoch_end(self) -> None:
        result = self.val_metric.compute()
        self.val_metric.reset()
        self.log_dict(
            {"val/dice": result.dice_full.mean, "val/aurc_dice": result.aurc_dice, "val/aurc": result.aurc},
            prog_bar=True,
        )
        self.val_curve = result.threshold_grid
        agg = self.val_metric._acc.case_aggregation
        self.case_scores = drift_record([c.uncertainty[agg] for c in result.cases or ()], agg)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain Python types only, so prediction loads checkpoints with torch.load(weights_only=True)
        if self.val_curve is not None:
            checkpoint["uaseg_val_curve"] = self.val_curve.to_dict()
        if self.temperature is not None:
            checkpoint["uaseg_temperature"] = float(self.temperature)
        if self.risk_calibration:
            checkpoint[RISK_CONTROL_KEY] = self.risk_calibration
        if self.confidence:
            checkpoint[HEAD_KEY] = self.confidence_record()
        if self.val_curves:
            checkpoint[VAL_CURVES_KEY] = {k: g.to_dict() for k, g in self.val_curves.items()}
        if self.case_scores:
            checkpoint[CASE_SCORES_KEY] = self.case_scores

    def confidence_record(self) -> dict:
        c = self.confidence or {}
        return c["head"].to_record(**c["info"], val_curve=c["val_curve"].to_dict() if c.get("val_curve") else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        curve = checkpoint.get("uaseg_val_curve")
        self.val_curve = ThresholdGrid.from_dict(curve) if curve else None
        if "uaseg_temperature" in checkpoint:  # else keep one fitted in memory (a test-only run)
            self.temperature = float(checkpoint["uaseg_temperature"])
        self.risk_calibration = checkpoint.get(RISK_CONTROL_KEY)
        self.case_scores = checkpoint.get(CASE_SCORES_KEY)
        curves = checkpoint.get(VAL_CURVES_KEY)
        if curves:
            self.val_curves = {k: ThresholdGrid.from_dict(g) for k, g in curves.items()}
        record = checkpoint.get(HEAD_KEY)
        if record and not self.confidence:  # a head fitted in this run (test-only: on other weights) wins
            info = {k: v for k, v in record.items() if k in ("parameters", "train_seconds", "epochs", "steps", "final_mse")}
            curve = record.get("val_curve")
            self.set_confidence_head(ConfidenceHead.from_record(record), info,
                                     ThresholdGrid.from_dict(curve) if curve else None)
