"""Deep ensembles from a multirun (``uaseg ensemble <folder>``): runs that differ only in ``seed``
are members; their softmax outputs are averaged on the shared test cases and evaluated like a run.

Each group (same dataset, model, loss setting, overrides and fold; ``method: single``) with at least
two members becomes an ensemble run folder ``<folder>/ensembles/<n>_<label>/`` whose ``summary.json``
has the usual schema with ``method: ensemble``, the member list, the scores ``ensemble`` (1 - max of
the mean softmax), ``ensemble_entropy`` and ``ensemble_mutual_information``, and a case-level
failure-detection AURC with the members' disagreement ``1 - mean pairwise Dice`` as the case score
(Zenk et al., MedIA 2025). Members are re-run from their tested checkpoints on their test split, which
must hold the same cases for every member (the split has its own seed, never the training seed).
With an ignore label (nnU-Net's ``"ignore"``) every number, the members' disagreement included, sees
only the annotated voxels, as a run's own test does; a case with none is left out with a warning.
"""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from uaseg.data.base import as_tensor
from uaseg.errors import UserError
from uaseg.inference.model import LoadedModel, load_model
from uaseg.selective import SelectiveAccumulator, write_score_outputs
from uaseg.selective.case_level import case_level_aurc
from uaseg.selective.case_stats import class_counts
from uaseg.selective.dice_curve import case_dice
from uaseg.uncertainty import SCORES, MeanOfPasses

log = logging.getLogger(__name__)

ENSEMBLE_SCORES = ("ensemble", "ensemble_entropy", "ensemble_mutual_information")


def member_checkpoint(run_dir: Path, summary: dict) -> Path:
    """The checkpoint a run tested, found by its name in the run's *own* ``checkpoints/`` (the path
    in ``summary.json`` may point into the original folder of a copied multirun, or at any file),
    else the run's ``best-*.ckpt``."""
    folder = Path(run_dir) / "checkpoints"
    name = Path(str(summary.get("checkpoint") or "")).name
    if name:
        own = folder / name
        if not own.is_file():
            raise UserError(f"{run_dir}: checkpoints/{name} not found (the checkpoint its summary.json says was "
                            "tested); this member cannot be re-run")
        return own
    best = sorted(folder.glob("best-*.ckpt"))
    if not best:
        raise UserError(f"{run_dir}: no checkpoint to re-run (checkpoints/best-*.ckpt)")
    return best[-1]


def pairwise_dice(preds: list[torch.Tensor], num_classes: int) -> float:
    """Mean over member pairs of the case Dice of one member's prediction against another's."""
    vals = []
    for a, b in itertools.combinations(preds, 2):
        counts = class_counts(a.reshape(-1).cpu().numpy(), b.reshape(-1).cpu().numpy(), num_classes)
        vals.append(float(case_dice(counts[None])[0]))
    return float(np.mean(vals)) if vals else 1.0


@torch.no_grad()
def evaluate_ensemble(members: list[LoadedModel], device: str | torch.device = "cpu") -> dict:
    """Every test case of the first member's split through every member: the ensemble scores'
    results, their cost, and the pairwise-Dice case-level failure detection."""
    first = members[0]
    evaluation = first.module.hparams["evaluation"]
    k, ignore = first.num_classes, getattr(first.module, "ignore_label", None)
    accs = {n: SelectiveAccumulator(k, coverages=evaluation["coverages"], quantize_bits=evaluation["quantize_bits"],
                                    case_aggregation=evaluation["case_aggregation"], bootstrap=evaluation["bootstrap"],
                                    ignore_index=ignore)
            for n in ENSEMBLE_SCORES}
    for m in members:
        m.module.to(device).eval()
    dm = first.datamodule
    dm.setup("test")
    seconds, disagreement = 0.0, []
    for batch in dm.test_dataloader():
        image = as_tensor(batch["image"]).to(device)
        label = as_tensor(batch["label"])[:, 0].long()
        start = time.perf_counter()
        mean, preds = MeanOfPasses(), []
        for m in members:
            _, pred, prob = m.module.segment(image)
            mean.add(prob)
            preds.append(pred)
        scores = mean.scores("ensemble", "ensemble")
        seconds += time.perf_counter() - start
        groups = batch.get("group") or ["test"] * label.shape[0]
        for i, case_id in enumerate(batch["case_id"]):
            annotated = None if ignore is None else label[i] != ignore
            if annotated is not None and not bool(annotated.any()):
                log.warning("case %s: every voxel is labelled ignore (%d); it is left out of the ensemble's "
                            "evaluation", case_id, ignore)
                continue
            for n in ENSEMBLE_SCORES:
                u, p = scores[n]
                accs[n].add_case(u[i].cpu(), p[i].cpu(), label[i], case_id=str(case_id), group=str(groups[i]))
            member_preds = [p[i].cpu() if annotated is None else p[i].cpu()[annotated] for p in preds]
            disagreement.append(1.0 - pairwise_dice(member_preds, k))
    results = {n: accs[n].compute() for n in ENSEMBLE_SCORES}
    n_cases = max(len(disagreement), 1)
    risk = 1.0 - np.array([c.at_coverage["1.00"].dice for c in results["ensemble"].cases])
    pairwise = case_level_aurc(np.array(disagreement), risk, bootstrap=int(evaluation["bootstrap"]))
    return {
        "results": results,
        "costs": {n: {"passes": len(members), "seconds_per_case": seconds / n_cases} for n in ENSEMBLE_SCORES},
        "case_level_pairwise_dice": {**pairwise, "aggregation": "1 - mean pairwise Dice of the members"},
    }


def write_ensemble(folder: Path, members: list[tuple[Path, dict]], overrides: list[str], device="cpu",
                   trust_checkpoint: bool = False) -> dict:
    """Evaluate the ensemble of ``members`` (run folder, summary) and write its run folder;
    ``overrides``: the members' shared Hydra overrides (the report groups by them)."""
    if folder.exists():
        raise FileExistsError(f"{folder} already exists; remove it or pass --force to rebuild it")
    checkpoints = [member_checkpoint(path, summary) for path, summary in members]  # all found before any load
    models = [load_model(c, device, trust_checkpoint=trust_checkpoint) for c in checkpoints]
    out = evaluate_ensemble(models, device)
    first_summary = members[0][1]
    from uaseg.config.identity import IDENTITY_KEYS

    identity = {k: first_summary.get(k) for k in IDENTITY_KEYS}
    identity.update(method="ensemble", seed=None)
    extra = {
        "overrides": [o for o in overrides if not o.lstrip("+~").startswith("seed=")],
        "members": [str(path) for path, _ in members],
        "member_seeds": [s.get("seed") for _, s in members],
        "case_level_pairwise_dice": out["case_level_pairwise_dice"],
    }
    return write_score_outputs(out["results"], folder, identity, out["costs"],
                               {n: SCORES[n].prediction for n in ENSEMBLE_SCORES}, extra)
