"""Name -> function registry of differentiable voxel-wise uncertainty scores.

A score maps logits (B, K, *spatial) to uncertainties u (B, *spatial), higher = less sure, with
gradients flowing back into the logits (the ranking term trains through u).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], Tensor]
SCORES: dict[str, ScoreFn] = {}


def register_score(name: str) -> Callable[[ScoreFn], ScoreFn]:
    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORES:
            raise KeyError(f"uncertainty score {name!r} already registered")
        SCORES[name] = fn
        return fn

    return deco


def get_score(name: str) -> ScoreFn:
    try:
        return SCORES[name]
    except KeyError:
        raise KeyError(f"unknown uncertainty score {name!r}; known: {sorted(SCORES)}") from None


@register_score("max_softmax")
def max_softmax_uncertainty(logits: Tensor) -> Tensor:
    """u = 1 - max_k softmax(logits)_k, computed as 1 - exp(max logit - logsumexp).

    Same value as ``1 - softmax(x).max(1)`` without materialising the softmax; in float32 or
    better (bfloat16 logits would quantise u to ~3 significant digits and create ties).
    """
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    top = x.max(dim=1).values
    return 1.0 - torch.exp(top - torch.logsumexp(x, dim=1))
