"""Calibrate a checkpoint on its run's validation cases: the referral threshold with a guarantee on
the Dice risk (:mod:`uaseg.selective.risk_control`), stored in the checkpoint, and the temperature of
the ``temperature`` score (:func:`fit_temperature_on_validation`).

Used by the runner between fit and test (``eval.risk_control``) and by ``uaseg calibrate``. The
score is the module's ``u = 1 - max softmax`` computed as prediction computes it (``module.segment``,
float32), on the *whole* validation split (trainer batch limits do not apply). The calibrations are
stored as plain dicts under ``uaseg_risk_control`` (``weights_only`` loading keeps working), the
checkpoint rewritten atomically with everything else in it unchanged. Caveat: the run's validation
split also selected the checkpoint, which makes the calibration slightly optimistic in principle.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from uaseg.errors import ConfigError, PredictError, UserError
from uaseg.io import check_checkpoint_file, save_torch
from uaseg.selective.case_stats import CaseStats, make_case_stats
from uaseg.selective.case_losses import risk_losses
from uaseg.selective.risk_control import METHODS, Calibration, alpha_key, calibrate, split_key
from uaseg.selective.risk_kinds import parse_kind
from uaseg.selective.risk_settings import UNITS, RiskControlSettings, count_units  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def validation_batches(module, datamodule, device: str | torch.device = "cpu"):
    """Every validation case (whole images; trainer batch limits do not apply): ``(image on device,
    label (B, *spatial), case ids)``, with ``module`` in inference mode on ``device``."""
    from uaseg.data.base import as_tensor

    datamodule.setup()
    module.eval().to(device)
    for batch in datamodule.val_dataloader():
        yield as_tensor(batch["image"]).to(device), as_tensor(batch["label"])[:, 0].long(), list(batch["case_id"])


def validation_stats(module, datamodule, device: str | torch.device = "cpu") -> list[CaseStats]:
    """Every validation case, segmented as prediction segments it, reduced to its exact stats (its
    annotated voxels only, with an ignore label)."""
    stats, ignore = [], getattr(module, "ignore_label", None)
    for image, label, case_ids in validation_batches(module, datamodule, device):
        u, pred, _ = module.segment(image)
        for i, cid in enumerate(case_ids):
            if ignore is not None and not bool((label[i] != ignore).any()):
                continue  # a case without annotated voxels (nnU-Net's ignore label everywhere) has no Dice
            stats.append(make_case_stats(u[i], pred[i], label[i], num_classes=module.num_classes,
                                         case_id=cid, group="val", aggregations=(), ignore_index=ignore))
    return stats


@torch.no_grad()
def fit_temperature_on_validation(module, datamodule, max_voxels: int, seed: int = 0,
                                  device: str | torch.device = "cpu") -> tuple[float, int]:
    """``(T, voxels used)``: temperature scaling fitted on a seeded uniform subsample of at most
    ``max_voxels`` validation voxels, spread evenly over the cases (logits of the sliding window)."""
    import numpy as np

    from uaseg.uncertainty.temperature import fit_temperature

    datamodule.setup()
    per_case = max(1, int(max_voxels) // max(len(datamodule.splits["val"]), 1))
    rng = np.random.default_rng(seed)
    zs, ys = [], []
    for image, label, _ in validation_batches(module, datamodule, device):
        logits = module.inferer(image, module.net)
        z = logits.float().movedim(1, -1).reshape(-1, logits.shape[1]).cpu()
        y = label.reshape(-1)
        ignore = getattr(module, "ignore_label", None)
        if ignore is not None:  # unannotated voxels have no label to fit to
            z, y = z[y != ignore], y[y != ignore]
        if y.numel() > per_case:
            idx = torch.from_numpy(rng.choice(y.numel(), per_case, replace=False))
            z, y = z[idx], y[idx]
        zs.append(z)
        ys.append(y)
    if not ys:
        raise ConfigError("the validation split is empty: no voxels to fit the temperature on")
    labels = torch.cat(ys)
    return fit_temperature(torch.cat(zs), labels), int(labels.numel())


def _describe(m: str, key: str, d: dict) -> str:
    kind, alpha = split_key(key)
    return (f"{m} " + ("" if kind == "dice" else f"{kind} ") + f"alpha={alpha:g}" + (f" delta={d['delta']:g} ({d.get('pvalue') or 'hb'})" if d.get("delta") is not None else "")
            + f": threshold {d['threshold']:.6g}, validation coverage {d['coverage']:.4f}, risk {d['risk']:.4f}"
            + f" on {d['n_calibration']} {d.get('unit', 'case')}s"
            + ("" if d.get("expected_coverage") is None else f" (expected coverage at this n {d['expected_coverage']:.4f})"))


def calibrate_checkpoint(ckpt: str | Path, settings: RiskControlSettings, datamodule=None,
                         device: str | torch.device = "cpu", overwrite: bool = False,
                         write: bool = True, trust_checkpoint: bool = False) -> tuple[dict, list[str]]:
    """Calibrate ``ckpt`` on its validation cases (per patient when the dataset names them and
    ``settings.unit`` is ``patient``) and add the result to it.

    ``datamodule``: the run's (default: rebuilt from the dataset config in the checkpoint). An
    existing calibration of the same (method, risk, alpha) is replaced only with ``overwrite``. Returns
    the stored record and one line per change; ``write=False`` computes without writing (DDP ranks > 0).
    The classes the checkpoint names are checked before any is built (:mod:`uaseg.runs.trust`).
    """
    from uaseg.runs.trust import read_checkpoint
    from uaseg.data import build_datamodule
    from uaseg.models.module import RISK_CONTROL_KEY, SelectiveSegModule

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    check_checkpoint_file(path)  # a truncated copy: one line naming it
    checkpoint = read_checkpoint(path, trust=trust_checkpoint)  # checked: no code runs, sound records
    if checkpoint is None:  # trusted, but only weights_only=False reads it
        raise UserError(f"{path}: calibrate rewrites checkpoints of plain data only (weights_only=True)")
    old = checkpoint.get(RISK_CONTROL_KEY) or {}
    old_cals = old.get("calibrations") or {}
    clash = [f"{m} {k} alpha={a:g}" for k, m, a in settings.triples() if alpha_key(a, k) in old_cals.get(m, {})]
    if clash and not overwrite:
        raise UserError(f"{path} is already calibrated for {', '.join(clash)}; pass overwrite=true to replace it")
    if datamodule is None:
        dataset_cfg = (checkpoint.get("hyper_parameters") or {}).get("dataset")
        if not dataset_cfg:
            raise UserError(f"{path} holds no dataset config (hyper-parameter 'dataset'); train it with a current train.py")
        datamodule = build_datamodule(dataset_cfg)
    datamodule.setup()
    units = settings.units(datamodule)
    val_ids = [str(c["case_id"]) for c in datamodule.splits["val"]]
    what = "validation patients" if units else "validation cases"
    settings.check_size(count_units(val_ids, units), datamodule.num_classes, what)   # before any segmentation
    if settings.unit == "patient" and not units:
        log.info("risk control: the dataset names no patient, so each validation case is its own unit")
    module = SelectiveSegModule.load_from_checkpoint(str(path), map_location="cpu", weights_only=True,
                                                     trust_checkpoint=trust_checkpoint)
    stats = validation_stats(module, datamodule, device)
    names = list(getattr(datamodule, "class_names", []) or [])
    names = ["background", *names] if len(names) == module.num_classes - 1 else None
    cals = {m: dict(by) for m, by in old_cals.items()}
    changes = []
    for kind in settings.kinds:
        losses = risk_losses(stats, kind, units)
        for m, a in settings.pairs():
            cal = calibrate(losses, a, m, settings.delta, pvalue=settings.pvalue, stats=stats, units=units,
                            expected_coverage=True, class_names=names)
            new = cal.to_dict()
            key = alpha_key(a, kind)
            prev = cals.setdefault(m, {}).get(key)
            changes.append(("replaced " if prev else "added ") + _describe(m, key, new)
                           + (f" (was threshold {prev['threshold']:.6g})" if prev else ""))
            if not cal.feasible or cal.threshold == float("-inf"):
                log.warning("%s", cal.statement)
            if cal.warning:
                log.warning("risk control: %s", cal.warning)
            cals[m][key] = new
    record = {"score": "u = 1 - max softmax", "split": "val", "n_calibration": len(stats),
              "case_ids": [s.case_id for s in stats], "units": units, "calibrations": cals}
    if write:
        checkpoint[RISK_CONTROL_KEY] = record
        save_torch(path, checkpoint)
        for c in changes:
            log.info("%s: %s", path.name, c)
    return record, changes


def find_best_checkpoint(run: str | Path) -> Path:
    """A run folder's selected checkpoint (:func:`uaseg.inference.files.resolve_checkpoint`: the one
    the run tested, else its single ``checkpoints/best-*.ckpt``), or ``run`` if it is a file."""
    from uaseg.inference.files import resolve_checkpoint

    path = resolve_checkpoint(run)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file or run folder")
    return path


def risk_threshold(record: dict | None, ckpt: Path, risk: float, method: str | None = None,
                   kind: str | None = None) -> dict:
    """Prediction's record for ``risk=alpha`` (``risk_kind``: dice by default): the calibrated threshold,
    its guarantee, and every kind's realised value on the calibration cases."""
    try:
        kind_key = parse_kind(kind or "dice").key
    except ValueError as e:
        raise PredictError(f"risk_kind: {e}") from None
    cals = (record or {}).get("calibrations") or {}
    key = alpha_key(risk, kind_key)
    found = {m: by[key] for m, by in cals.items() if key in by}
    have = ", ".join(f"{m} {' alpha='.join(map(str, split_key(k)))}" for m, by in cals.items() for k in by) or "none"
    # a run folder calibrates its best checkpoint; any other checkpoint is named as the file itself
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" and ckpt.name.startswith("best-") else ckpt
    how = (f"uaseg calibrate {run} alpha={risk:g}" + (f" method={method}" if method else "")
           + (f" risk={kind_key}" if kind_key != "dice" else ""))
    if method is not None and method not in METHODS:
        raise PredictError(f"risk_method={method}: choose from {list(METHODS)}")
    if (method not in found) if method is not None else not found:
        raise PredictError(f"{ckpt} has no {method or 'risk'} calibration for risk={risk:g} risk_kind={kind_key} "
                           f"(calibrated: {have}); calibrate it on its run's validation cases with: {how}")
    if method is None and len(found) > 1:
        raise PredictError(f"{ckpt} is calibrated for risk={risk:g} with {' and '.join(found)}: choose one with "
                           f"risk_method={'|'.join(found)}")
    cal = Calibration.from_dict(found[method if method is not None else next(iter(found))])
    out = {"threshold": cal.threshold, "threshold_source": "risk",
           "threshold_rule": f"calibrated on the validation {cal.unit}s for {cal.kind} risk {cal.alpha:g} "
                             f"({cal.method}); refer voxels with u > threshold",
           "requested_coverage": None, "validation_coverage": cal.coverage,
           "risk_control": {"risk": cal.kind, "method": cal.method, "pvalue": cal.pvalue, "alpha": cal.alpha,
                            "delta": cal.delta, "unit": cal.unit, "n_calibration": cal.n_calibration,
                            "feasible": cal.feasible, "calibration_risk": cal.risk, "threshold": cal.threshold,
                            "expected_coverage": cal.expected_coverage, "calibration_values": cal.values,
                            "components": cal.components, "guarantee": cal.statement,
                            **({"warning": cal.warning} if cal.warning else {})}}
    if cal.threshold == float("-inf"):
        out["note"] = "threshold -inf: every voxel is referred (" + cal.statement + ")"
    log.info("risk %.4g (%s %s) -> threshold %.6g: %s", risk, cal.kind, cal.method, cal.threshold, cal.statement)
    return out


def fit_confidence_head_stage(module, datamodule, settings, device: str | torch.device = "cpu",
                              seed: int = 0) -> dict:
    """The ConfidNet second stage (:mod:`uaseg.uncertainty.confidnet`): a head fitted on the training
    split with ``module``'s network frozen, then its validation risk-coverage curve (so prediction can
    turn ``coverage=`` into a ``tcp`` threshold); the head is set on ``module``. Returns its cost."""
    from uaseg.uncertainty.confidnet import fit_confidence_head

    datamodule.setup()
    spatial_dims = int(module.hparams["net"].get("spatial_dims", 2))
    head, info = fit_confidence_head(module.net, datamodule.train_dataloader(), spatial_dims, settings,
                                     device=device, seed=seed)
    module.set_confidence_head(head, info)
    module.set_confidence_head(head, info, validation_curves(module, datamodule, ["tcp"], device).get("tcp"))
    return info


def validation_curves(module, datamodule, scores, device: str | torch.device = "cpu") -> dict:
    """score -> the validation risk-coverage ThresholdGrid of each one-pass score (as prediction
    segments: :meth:`SelectiveSegModule.segment`), so ``predict.py score=<name> coverage=c`` can turn
    ``c`` into that score's threshold; empty without validation cases. One network pass per case serves
    every score (with ``tcp``, the pass of network + head); annotated voxels only, as
    :func:`validation_stats`."""
    from uaseg.selective import SelectiveSegmentationMetric
    from uaseg.data.base import as_tensor
    from uaseg.uncertainty.scores import deterministic_scores

    datamodule.setup()
    if not scores or not len(datamodule.splits["val"]):
        return {}
    ignore = getattr(module, "ignore_label", None)
    metrics = {s: SelectiveSegmentationMetric(num_classes=module.num_classes, bootstrap=0, ignore_index=ignore)
               for s in scores}
    for image, label, case_ids in validation_batches(module, datamodule, device):
        if "tcp" in metrics:
            logits, u_tcp = module._tcp_pass(image)
        else:
            logits = module.inferer(image, module.net)
        maps = deterministic_scores(as_tensor(logits), None)
        if "tcp" in metrics:
            maps["tcp"] = (u_tcp, maps["max_softmax"][1])
        for s, metric in metrics.items():
            if s not in maps:
                module.segment(image, score=s)  # raises the one-line error naming the unknown score
            u, pred = maps[s]
            for i, cid in enumerate(case_ids):
                if ignore is not None and not bool((label[i] != ignore).any()):
                    continue  # a case without annotated voxels has no Dice
                metric.update(u[i].cpu(), pred[i].cpu(), label[i], case_id=cid, group="val")
    return {s: m.compute().threshold_grid for s, m in metrics.items()}
