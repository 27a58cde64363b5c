"""What a referral threshold can be calibrated to control: the risk *kinds* (``eval.risk_control.risk``).

Every kind is a loss per calibration unit (a case, or a patient: the mean over its images) in [0, 1]
and non-decreasing in the threshold ``t`` (voxels with ``u > t`` are referred, i.e. set to the ground
truth), so conformal risk control and Learn-then-Test apply to it unchanged:

* ``dice`` -- ``1 - case Dice`` (mean over foreground classes; :mod:`.dice_curve`).
* ``structure`` -- ``1 - Dice`` of each foreground class separately: ``K - 1`` losses controlled at once
  with one threshold (a class absent from label and prediction counts as loss 0: nothing to miss).
* ``tail@b`` -- ``1[1 - Dice > b]``: the fraction of units that end below Dice ``1 - b`` (0/1 losses).
* ``fnr`` -- the fraction of the unit's foreground voxels (label > 0) still wrong after referral
  (missed, or given another foreground class); 0 when it has none.

Monotone: referring a wrong voxel (predicted ``a``, true ``b``) adds a TP of ``b`` and removes an FN of
``b`` and an FP of ``a``; no class Dice falls (a class can leave the mean only with Dice 0, see
:mod:`.case_losses`), the number of wrong foreground voxels falls by one or stays, an indicator of a
non-increasing quantity above ``b`` is non-increasing, and a mean over images keeps all of this.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .dice_curve import case_dice, class_dice

BASE_KINDS = ("dice", "structure", "tail", "fnr")
KIND_HELP = "dice | structure | tail@<beta in (0, 1)> (e.g. tail@0.15) | fnr"


@dataclass(frozen=True)
class RiskKind:
    name: str                  # one of BASE_KINDS
    beta: float | None = None  # tail only

    @property
    def key(self) -> str:
        """``"dice"``, ``"structure"``, ``"tail@0.15"``, ``"fnr"``: the name in configs and files."""
        return f"tail@{self.beta:g}" if self.name == "tail" else self.name

    @property
    def binary(self) -> bool:
        """0/1 losses (the exact binomial test applies)."""
        return self.name == "tail"

    def describe(self, alpha: float, unit: str = "case") -> str:
        """What ``risk <= alpha`` means, in words."""
        units = unit + "s"
        if self.name == "dice":
            return f"the Dice risk (1 - Dice, mean over classes, referred voxels counted as correct) is at most {alpha:g}"
        if self.name == "structure":
            return (f"the Dice risk of every structure separately (1 - Dice of that class, referred voxels "
                    f"counted as correct) is at most {alpha:g}, i.e. each structure's mean Dice is at least {1 - alpha:g}")
        if self.name == "tail":
            return (f"the fraction of {units} ending below Dice {1 - self.beta:g} (1 - Dice > {self.beta:g}, "
                    f"referred voxels counted as correct) is at most {alpha:g}")
        return (f"the fraction of foreground voxels missed (wrong after referral) per {unit} is at most "
                f"{alpha:g}")


def parse_kind(value) -> RiskKind:
    """``"tail@0.15"`` -> ``RiskKind("tail", 0.15)``; a :class:`ValueError` naming the choices otherwise."""
    if isinstance(value, RiskKind):
        return value
    s = str(value).strip()
    m = re.fullmatch(r"tail@([0-9.eE+-]+)", s)
    if m:
        try:
            beta = float(m.group(1))
        except ValueError:
            beta = float("nan")
        if not 0.0 < beta < 1.0:
            raise ValueError(f"risk kind {s!r}: beta must be in (0, 1)")
        return RiskKind("tail", beta)
    if s in ("dice", "structure", "fnr"):
        return RiskKind(s)
    raise ValueError(f"risk kind {s!r}: choose from {KIND_HELP}")


def n_components(kind: RiskKind, num_classes: int) -> int:
    """Losses controlled at once: ``K - 1`` for ``structure``, else 1."""
    return max(1, num_classes - 1) if kind.name == "structure" else 1


def base_values(kind: RiskKind, counts: np.ndarray) -> np.ndarray:
    """(..., M) base loss from (..., C, 3) TP/FP/FN counts: ``1 - Dice`` (``dice``, ``tail``), per class
    (``structure``) or the missed fraction (``fnr``). ``tail``'s indicator is applied per unit, after
    its images are averaged (:func:`unit_transform`)."""
    counts = np.asarray(counts)
    if kind.name in ("dice", "tail"):
        return (1.0 - case_dice(counts))[..., None]
    if kind.name == "structure":
        d = class_dice(counts[..., 0], counts[..., 1], counts[..., 2])
        return np.where(np.isnan(d), 0.0, 1.0 - d)
    fg = (counts[..., 0] + counts[..., 2]).sum(-1).astype(np.float64)
    fn = counts[..., 2].sum(-1).astype(np.float64)
    return np.where(fg > 0, fn / np.maximum(fg, 1.0), 0.0)[..., None]


def unit_transform(kind: RiskKind, values: np.ndarray) -> np.ndarray:
    """A unit's loss from its base loss (the mean over its images): ``tail`` -> ``1[value > beta]``."""
    if kind.name == "tail":
        return (values > kind.beta).astype(np.float64)
    return values


def values_at(kind: RiskKind, counts: np.ndarray, unit_of: np.ndarray | None = None) -> np.ndarray:
    """(units, M) loss of each unit from (cases, C, 3) counts at one threshold (``unit_of``: unit
    number of each case, default each case its own unit). The direct, non-incremental computation
    (:func:`uaseg.selective.risk_control.evaluate` uses it on test cases)."""
    base = base_values(kind, counts)
    if unit_of is None:
        return unit_transform(kind, base)
    unit_of = np.asarray(unit_of)
    m = int(unit_of.max()) + 1
    sums = np.zeros((m, base.shape[-1]))
    np.add.at(sums, unit_of, base)
    return unit_transform(kind, sums / np.bincount(unit_of, minlength=m)[:, None])
