"""Random tiny cases (u, prediction, label) and a brute-force per-case Dice, shared by the selective
metric and risk-control tests."""

from __future__ import annotations

import numpy as np


def bf_case_dice(pred, label, k):
    """Mean Dice over the foreground classes present in the prediction or the label (1 if none)."""
    ds = []
    for c in range(1, k):
        p, y = pred == c, label == c
        if p.any() or y.any():
            ds.append(2 * np.sum(p & y) / (p.sum() + y.sum()))
    return float(np.mean(ds)) if ds else 1.0


def random_cases(rng, m, k, shape, acc=0.7, levels=None, empty_class=None):
    """``m`` cases of ``k`` classes: labels uniform (``empty_class`` never present), predictions right
    with probability ``acc``, uncertainties uniform (quantised to ``levels`` values: ties, across cases too)."""
    cases = []
    for _ in range(m):
        y = rng.integers(0, k, shape)
        if empty_class is not None:
            y[y == empty_class] = 0
        p = np.where(rng.random(shape) < acc, y, rng.integers(0, k, shape))
        u = rng.random(shape)
        if levels:
            u = np.floor(u * levels) / levels
        cases.append((u.astype(np.float32), p, y))
    return cases
