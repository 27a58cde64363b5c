"""Name -> function registry of differentiable voxel-wise uncertainty scores.

A score maps logits (B, K, *spatial) to ``(u, pred)``: uncertainties u (B, *spatial), higher =
less sure, with gradients flowing back into the logits (the ranking term trains through u), and
the argmax prediction (B, *spatial) that decides wrong vs correct. Returning both lets a score
share one pass over the logits (``softmax(x).max(1)`` gives both; a separate ``argmax`` over the
class dim of a 5-D tensor costs more than the softmax on CPU).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor], tuple[Tensor, Tensor]]
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
def max_softmax_uncertainty(logits: Tensor) -> tuple[Tensor, Tensor]:
    """u = 1 - max_k softmax(logits)_k and pred = argmax_k, from one softmax in float32 or better
    (bfloat16 probabilities would quantise u to ~3 significant digits and create ties)."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    conf, pred = torch.softmax(x, dim=1).max(dim=1)
    return 1.0 - conf, pred


@register_score("entropy")
def entropy_uncertainty(logits: Tensor) -> tuple[Tensor, Tensor]:
    """u = predictive entropy of softmax(logits) divided by log K (in [0, 1]) and pred = argmax_k;
    log_softmax keeps the gradient finite where a probability underflows to 0."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    log_p = torch.log_softmax(x, dim=1)
    p = log_p.exp()
    k = x.shape[1]
    h = -(p * log_p).sum(dim=1)
    return (h / math.log(k) if k > 1 else h), p.argmax(dim=1)


@register_score("margin")
def margin_uncertainty(logits: Tensor) -> tuple[Tensor, Tensor]:
    """u = 1 - (p1 - p2), one minus the gap between the two largest softmax probabilities (in [0, 1]),
    and pred = argmax_k; the gradient flows into both top classes (topk is differentiable). With two
    classes u = 2 (1 - p_max): the paper's score at twice the scale, so a fixed loss.margin is half as
    wide relative to it."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    p = torch.softmax(x, dim=1)
    if x.shape[1] < 2:
        conf, pred = p.max(dim=1)
        return 1.0 - conf, pred
    top, idx = p.topk(2, dim=1)
    return 1.0 - (top[:, 0] - top[:, 1]), idx[:, 0]


@register_score("logit_margin")
def logit_margin_uncertainty(logits: Tensor) -> tuple[Tensor, Tensor]:
    """u = z2 - z1, minus the gap between the two largest logits (in logits, <= 0; ``loss.margin`` is then
    a margin in logits), and pred = argmax_k. Its gradient is -1 on the top logit and +1 on the runner-up
    whatever the probabilities: unlike the softmax scores it does not vanish on a confidently wrong voxel.
    At test ``eval.scores=[logit_margin]`` ranks by the same gap (as sigmoid(z2 - z1), in (0, 1/2])."""
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if x.shape[1] < 2:
        return torch.zeros_like(x[:, 0]), torch.zeros_like(x[:, 0], dtype=torch.long)
    top, idx = x.topk(2, dim=1)
    return top[:, 1] - top[:, 0], idx[:, 0]
