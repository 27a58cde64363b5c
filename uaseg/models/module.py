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
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from uaseg.data.base import as_tensor
from uaseg.errors import ConfigError
from uaseg.losses.variants import second_view_logits
from uaseg.selective import SelectiveResult, SelectiveSegmentationMetric, ThresholdGrid
from uaseg.selective.risk_evaluate import evaluate_all
from uaseg.uncertainty import SCORES, MeanOfPasses, check_scores, deterministic_scores
from uaseg.uncertainty.confidnet import HEAD_KEY, ConfidenceHead, WithConfidence
from uaseg.uncertainty.mc_dropout import dropout_active
from uaseg.uncertainty.tta import flip_sets, flipped_probabilities

log = logging.getLogger(__name__)

#: keys of the ``eval`` config the module itself uses (the report writer reads the others)
EVAL_KEYS = ("coverages", "quantize_bits", "case_aggregation", "bootstrap", "scores", "tta_flips", "mc_samples")
#: gradient ratio (ranking / segmentation, at the logits) above which a multi-class run is warned
DOMINANT_RATIO = 100.0
#: checkpoint key of the calibrated referral thresholds (plain dicts: ``uaseg.inference.calibrate``)
RISK_CONTROL_KEY = "uaseg_risk_control"
#: checkpoint key of the validation curves of the other one-pass scores (``predict.py score=margin coverage=...``)
VAL_CURVES_KEY = "uaseg_val_curves"
#: the one-pass scores prediction can refer by (tcp: with a ConfidNet head)
PREDICT_SCORES = ("max_softmax", "entropy", "margin", "doctor", "max_logit", "energy", "tcp")


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


@dataclass
class CaseOutput:
    """One evaluated case, as ``test_step`` hands it to callbacks (tensors on the module's device):
    per score, the voxel uncertainty and the prediction it is evaluated with (``eval.scores`` order;
    the first is the run's main score)."""

    case_id: str
    group: str
    label: torch.Tensor  # (*spatial) int64
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (uncertainty float, prediction int64)

    @property
    def uncertainty(self) -> torch.Tensor:
        return next(iter(self.scores.values()))[0]

    @property
    def prediction(self) -> torch.Tensor:
        return next(iter(self.scores.values()))[1]


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
        total, parts = self.loss(logits, as_tensor(batch["label"]), epoch=self._progress(batch_idx),
                                 view_logits=view, measure=self._logs_this_step())
        if not torch.isfinite(total):
            cases = sorted({str(c) for c in batch.get("case_id") or ()})  # the runner adds the checkpoint
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at epoch {self.current_epoch}, "
                f"global step {self.global_step} (parts: {({k: float(v) for k, v in parts.items()})})"
                + (f", batch of cases {', '.join(cases)}" if cases else "")
            )
        self._warn_if_ranking_dominates(parts.get("grad_ratio"))
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.float() for k, v in parts.items()}, batch_size=bs)
        return total

    def _warn_if_ranking_dominates(self, ratio: torch.Tensor | None) -> None:
        """Once per run: with more than two classes a ranking term whose gradient dominates the
        segmentation term's slows segmentation (docs/multiclass_3d.md)."""
        if ratio is None or self.num_classes <= 2 or getattr(self, "_warned_ratio", False):
            return
        if float(ratio) > DOMINANT_RATIO:
            self._warned_ratio = True
            log.warning("the ranking term's gradient at the logits is %.0fx the segmentation term's (epoch %d): "
                        "with %d classes it can slow segmentation; see loss.steer=true / loss.balance "
                        "(docs/multiclass_3d.md)", float(ratio), self.current_epoch, self.num_classes)

    def _progress(self, batch_idx: int) -> float:
        """Fractional epoch (a loss warm-up rises per step, not per epoch)."""
        n = getattr(self.trainer, "num_training_batches", None) if self._trainer is not None else None
        frac = batch_idx / n if isinstance(n, (int, float)) and math.isfinite(n) and n > 0 else 0.0
        return self.current_epoch + min(frac, 1.0)

    def _logs_this_step(self) -> bool:
        """Whether Lightning writes this step's metrics: the gradient ratio is measured only then."""
        if self._trainer is None:
            return False
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", False))

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

    def confidence_record(self) -> dict:
        c = self.confidence or {}
        return c["head"].to_record(**c["info"], val_curve=c["val_curve"].to_dict() if c.get("val_curve") else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        curve = checkpoint.get("uaseg_val_curve")
        self.val_curve = ThresholdGrid.from_dict(curve) if curve else None
        if "uaseg_temperature" in checkpoint:  # else keep one fitted in memory (a test-only run)
            self.temperature = float(checkpoint["uaseg_temperature"])
        self.risk_calibration = checkpoint.get(RISK_CONTROL_KEY)
        curves = checkpoint.get(VAL_CURVES_KEY)
        if curves:
            self.val_curves = {k: ThresholdGrid.from_dict(g) for k, g in curves.items()}
        record = checkpoint.get(HEAD_KEY)
        if record and not self.confidence:  # a head fitted in this run (test-only: on other weights) wins
            info = {k: v for k, v in record.items() if k in ("parameters", "train_seconds", "epochs", "steps", "final_mse")}
            curve = record.get("val_curve")
            self.set_confidence_head(ConfidenceHead.from_record(record), info,
                                     ThresholdGrid.from_dict(curve) if curve else None)

    # ------------------------------------------------------------------ test
    def _families(self) -> set[str]:
        return {SCORES[n].family for n in self.scores}

    @torch.no_grad()
    def score_maps(self, image: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every score of ``eval.scores`` for a batch of whole images: name -> (uncertainty,
        prediction), each family's passes run once (and timed, for the cost in the report)."""
        def segment(x: torch.Tensor) -> torch.Tensor:
            return as_tensor(self.inferer(x, self.net))

        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        families = self._families()
        if "deterministic" in families:
            if "temperature" in self.scores and self.temperature is None:
                raise ConfigError("eval.scores asks for 'temperature' but no temperature was fitted for this model")
            with self._timed("deterministic"):
                out.update(deterministic_scores(segment(image), self.temperature))
        if "confidnet" in families:
            with self._timed("confidnet"):
                logits, u = self._tcp_pass(image)
                out["tcp"] = (u, logits.argmax(dim=1))
        if "tta" in families:
            with self._timed("tta"):
                acc = MeanOfPasses()
                for prob in flipped_probabilities(segment, image, self.tta_flips):
                    acc.add(prob)
                out.update(acc.scores("tta", "tta"))
        if "mc" in families:
            with self._timed("mc"), dropout_active(self.net):
                acc = MeanOfPasses()
                for _ in range(self.mc_samples):
                    acc.add(segment(image).float().softmax(dim=1))
                out.update(acc.scores("mc", "mc_dropout"))
        return {name: out[name] for name in self.scores}

    @contextmanager
    def _timed(self, family: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._family_time[family] = self._family_time.get(family, 0.0) + time.perf_counter() - start

    def family_passes(self, family: str) -> int:
        return {"deterministic": 1, "confidnet": 1, "tta": len(self.tta_flips), "mc": self.mc_samples}[family]

    def on_test_epoch_start(self) -> None:
        self._family_time, self._test_cases = {}, 0
        if "tcp" in self.scores and not self.confidence:
            raise ConfigError("eval.scores asks for 'tcp' but this model has no ConfidNet head: train with "
                              "confidence_head=tcp (or test a checkpoint that holds one)")

    def test_step(self, batch: dict, batch_idx: int) -> list[CaseOutput]:
        maps = self.score_maps(as_tensor(batch["image"]))
        label = as_tensor(batch["label"])[:, 0].long()
        groups = batch.get("group") or ["test"] * label.shape[0]
        out = []
        for i, case_id in enumerate(batch["case_id"]):
            case = CaseOutput(str(case_id), str(groups[i]), label[i], {n: (u[i], p[i]) for n, (u, p) in maps.items()})
            for name, (u, pred) in case.scores.items():
                self.test_metrics[name].update(u, pred, case.label, case_id=case.case_id, group=case.group)
            out.append(case)
        self._test_cases += len(out)
        return out

    def on_test_epoch_end(self) -> None:
        self.test_results = {}
        for i, (name, metric) in enumerate(self.test_metrics.items()):
            result = metric.compute()
            if name == "max_softmax":  # the score referral thresholds are calibrated on
                result.risk_control = self._test_risk_control(metric)
            metric.reset()
            self.test_results[name] = result
            self._log_test_scalars(result, "test/" if i == 0 else f"test/{name}/")
        self.test_result = self.test_results[self.scores[0]]
        cases = max(self._test_cases, 1)
        self.test_costs = {
            name: {"passes": self.family_passes(SCORES[name].family),
                   "seconds_per_case": self._family_time.get(SCORES[name].family, 0.0) / cases}
            for name in self.scores
        }
        if "tcp" in self.test_costs and self.confidence:  # the head's extra cost beside its inference time
            info = self.confidence["info"]
            self.test_costs["tcp"].update({"parameters": info.get("parameters"),
                                           "train_seconds": info.get("train_seconds")})

    def _log_test_scalars(self, result: SelectiveResult, prefix: str) -> None:
        scalars = {
            "aurc_dice": result.aurc_dice,
            "aurc": result.aurc,
            "eaurc": result.eaurc,
            "augrc": result.augrc,
            "dice": result.dice_full.mean,
            "dice_p5": result.dice_full.p5,
        }
        for cov, point in result.at_coverage.items():
            scalars[f"dice@{cov}"] = point.dice_mean
            scalars[f"dice_p5@{cov}"] = point.dice_p5
        for method, by_alpha in (result.risk_control or {}).items():
            for alpha, r in by_alpha.items():   # alpha: "0.05" (Dice) or "structure:0.1"
                key = alpha.replace(":", "_")
                scalars[f"risk@{method}_{key}"] = r["test_risk"]
                scalars[f"coverage@{method}_{key}"] = r["test_coverage"]
        self.log_dict({prefix + k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(v)})

    def _test_risk_control(self, metric: SelectiveSegmentationMetric) -> dict | None:
        """The checkpoint's calibrated thresholds on the test cases (before the metric's reset)."""
        if not self.risk_calibration:
            return None
        if self.hparams.evaluation.get("quantize_bits") is not None:
            log.warning("the checkpoint's risk-control calibrations are not evaluated: eval.quantize_bits is set")
            return None
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        units = dm.case_units("test") if hasattr(dm, "case_units") else None   # patients, when named
        names = list(getattr(dm, "class_names", ()) or ())
        names = ["background", *names] if len(names) == self.num_classes - 1 else None
        return evaluate_all(self.risk_calibration, metric.gathered_case_stats(), units, names)
