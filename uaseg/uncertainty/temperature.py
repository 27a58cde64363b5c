"""Temperature scaling (Guo et al., ICML 2017): one scalar T > 0 dividing the logits, fitted on the
validation cases by minimising the voxel negative log-likelihood. T leaves the prediction unchanged and
only re-ranks the uncertainty 1 - max softmax(z / T).

The NLL is convex in 1/T, so a bounded scalar search over log(1/T) finds its minimum. Fitted on a
run's validation cases by :func:`uaseg.stages.temperature.fit_temperature_on_validation`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """T minimising ``mean CE(logits / T, labels)``; ``logits (N, K)``, ``labels (N,)``."""
    from scipy.optimize import minimize_scalar

    z = logits.detach().to(torch.float64)
    y = labels.detach().long()
    if z.shape[0] == 0:
        raise ValueError("no voxels to fit a temperature on")

    def nll(log_beta: float) -> float:
        return float(F.cross_entropy(z * math.exp(log_beta), y))

    res = minimize_scalar(nll, bounds=(math.log(1e-3), math.log(1e3)), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(-res.x))
