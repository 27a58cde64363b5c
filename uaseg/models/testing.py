"""The test half of :class:`~uaseg.models.module.SelectiveSegModule`: every score of ``eval.scores``
per case (each family of passes run once and timed), the selective metrics per score, and the
checkpoint's calibrated thresholds evaluated on the test cases."""

from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from uaseg.data.base import as_tensor
from uaseg.errors import ConfigError
from uaseg.selective import SelectiveResult, SelectiveSegmentationMetric
from uaseg.selective.risk_evaluate import evaluate_all
from uaseg.uncertainty import SCORES, MeanOfPasses, deterministic_scores
from uaseg.uncertainty.mc_dropout import dropout_active
from uaseg.uncertainty.tta import flipped_probabilities

log = logging.getLogger(__name__)


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


class TestScoring:
    """Mixed into the LightningModule (uses its ``net``, ``inferer``, ``scores``, ``test_metrics``,
    ``temperature``, ``confidence``, ``risk_calibration`` and Lightning's ``log_dict``)."""

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
        if self.shift is not None:  # the shift testbed (uaseg.shift): validation cases first
            self.shift.start(self, self._datamodule())
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
        if self.shift is not None:
            self.shift.add_batch(self, as_tensor(batch["image"]), label, [c.case_id for c in out],
                                 [c.group for c in out], maps.get("max_softmax"))
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
        if self.shift is not None:
            dm = self._datamodule()
            units = {s: dm.case_units(s) if hasattr(dm, "case_units") else None for s in ("test", "val")}
            self.shift_report = self.shift.compute(self.risk_calibration, units["test"], units["val"], self._class_names(dm))
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
        dm = self._datamodule()
        units = dm.case_units("test") if hasattr(dm, "case_units") else None   # patients, when named
        return evaluate_all(self.risk_calibration, metric.gathered_case_stats(), units, self._class_names(dm))

    def _datamodule(self):
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    def _class_names(self, dm) -> list[str] | None:
        names = list(getattr(dm, "class_names", ()) or ())
        return ["background", *names] if len(names) == self.num_classes - 1 else None
