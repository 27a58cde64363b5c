"""Temperature scaling (Guo et al., ICML 2017): one scalar T > 0 dividing the logits, fitted on the
validation cases by minimising the voxel negative log-likelihood. T leaves the prediction unchanged and
only re-ranks the uncertainty 1 - max softmax(z / T).

The NLL is convex in 1/T, so a bounded scalar search over log(1/T) finds its minimum. Validation
volumes can hold tens of millions of voxels; a seeded uniform subsample of at most ``max_voxels``
(spread evenly over the cases) is used.
"""

from __future__ import annotations

import math

import numpy as np
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


@torch.no_grad()
def validation_logits(module, loader, max_voxels: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(logits (N, K), labels (N,))``: a seeded uniform subsample of the voxels of every case in
    ``loader`` (whole images, as the module's sliding window segments them)."""
    from uaseg.models.module import as_tensor

    cases = list(loader)
    if not cases:
        raise ValueError("the validation split is empty: no voxels to fit a temperature on")
    per_case = max(1, int(max_voxels) // len(cases))
    rng = np.random.default_rng(seed)
    zs, ys = [], []
    device = next(module.parameters()).device
    for batch in cases:
        logits = as_tensor(module.inferer(as_tensor(batch["image"]).to(device), module.net)).float()
        label = as_tensor(batch["label"]).long()
        k = logits.shape[1]
        z = logits.movedim(1, -1).reshape(-1, k).cpu()
        y = label.reshape(-1)
        if y.numel() > per_case:
            idx = torch.from_numpy(rng.choice(y.numel(), per_case, replace=False))
            z, y = z[idx], y[idx]
        zs.append(z)
        ys.append(y)
    return torch.cat(zs), torch.cat(ys)
