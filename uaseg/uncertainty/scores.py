"""Test-time voxel uncertainty scores (higher = refer first) and the passes they need.

A *family* is one way of getting class probabilities; every score of a family is read off the same
passes, so asking for ``tta`` and ``tta_entropy`` costs the passes once:

=============  =============================================  ==========================================
family         probabilities                                   scores
=============  =============================================  ==========================================
deterministic  one pass: softmax(z) (and softmax(z / T))        max_softmax, entropy, temperature, margin,
                                                                 logit_margin, doctor, max_logit, energy
confidnet      one pass with a learned head on the features    tcp (:mod:`uaseg.uncertainty.confidnet`)
tta            mean softmax over flips, mapped back exactly     tta, tta_entropy
mc             mean softmax over passes with dropout active     mc_dropout, mc_entropy, mc_mutual_information
ensemble       mean softmax over independently trained nets     ensemble, ensemble_entropy,
                                                                 ensemble_mutual_information
=============  =============================================  ==========================================

Entropies and mutual information are divided by log K, so every score lies in [0, 1]; so do the
others, because the checkpoint's thresholds, ``eval.quantize_bits`` (range [0, 1]) and the
risk-control grids assume it:

* ``margin`` = 1 - (p1 - p2), the gap between the two largest probabilities;
* ``logit_margin`` = sigmoid(z2 - z1), the gap between the two largest logits, mapped into (0, 1/2]
  (the test-time twin of ``loss.score=logit_margin``; with two classes it equals 1 - p_max);
* ``doctor`` = (1 - sum_k p_k^2) / (1 - 1/K), DOCTOR's Gini score (Granese et al., NeurIPS 2021);
* ``max_logit`` = sigmoid(-max_k z_k) and ``energy`` = sigmoid(-logsumexp_k z_k) (Hendrycks et al.
  2022; Liu et al., NeurIPS 2020): the sigmoid maps the unbounded -max logit / free energy into
  (0, 1) without changing their order (ties only where float32 saturates: a max logit or
  log-sum-exp above about 88 or below about -17).

With two classes margin = 2 (1 - p_max) and doctor = 4 p (1 - p) are monotone in p_max and rank
voxels exactly as ``max_softmax`` (as ``entropy`` and ``temperature`` do); ``max_logit`` and
``energy`` depend on the logits' scale, not only on their difference, and rank differently. The
prediction is the argmax of the family's (mean) probabilities: deterministic scores keep the
network's own prediction, the multi-pass families change it (and Dice at coverage 1 with it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from uaseg.errors import ConfigError


@dataclass(frozen=True)
class Score:
    family: str
    #: which probabilities give the prediction this score is evaluated with
    prediction: str


SCORES: dict[str, Score] = {
    "max_softmax": Score("deterministic", "argmax of one pass"),
    "entropy": Score("deterministic", "argmax of one pass"),
    "temperature": Score("deterministic", "argmax of one pass"),
    "margin": Score("deterministic", "argmax of one pass"),
    "logit_margin": Score("deterministic", "argmax of one pass"),
    "doctor": Score("deterministic", "argmax of one pass"),
    "max_logit": Score("deterministic", "argmax of one pass"),
    "energy": Score("deterministic", "argmax of one pass"),
    "tcp": Score("confidnet", "argmax of one pass"),
    "tta": Score("tta", "argmax of the mean over flips"),
    "tta_entropy": Score("tta", "argmax of the mean over flips"),
    "mc_dropout": Score("mc", "argmax of the mean over dropout passes"),
    "mc_entropy": Score("mc", "argmax of the mean over dropout passes"),
    "mc_mutual_information": Score("mc", "argmax of the mean over dropout passes"),
    "ensemble": Score("ensemble", "argmax of the mean over members"),
    "ensemble_entropy": Score("ensemble", "argmax of the mean over members"),
    "ensemble_mutual_information": Score("ensemble", "argmax of the mean over members"),
}
#: scores a single training run evaluates (ensembles come from ``uaseg ensemble``)
RUN_FAMILIES = ("deterministic", "confidnet", "tta", "mc")


def check_scores(names, allowed_families=RUN_FAMILIES) -> list[str]:
    """The requested score names, validated (one clear line naming the bad one)."""
    names = [str(n) for n in names]
    if not names:
        raise ConfigError("eval.scores is empty; list at least one score, e.g. [max_softmax]")
    for n in names:
        if n not in SCORES or SCORES[n].family not in allowed_families:
            known = [k for k, s in SCORES.items() if s.family in allowed_families]
            raise ConfigError(f"eval.scores: unknown score {n!r}; known: {known}")
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.scores lists a score twice: {names}")
    return names


def entropy(prob: Tensor, dim: int = 1) -> Tensor:
    """Shannon entropy of ``prob`` along ``dim``, divided by log K (so in [0, 1])."""
    k = prob.shape[dim]
    h = -(prob * torch.log(prob.clamp_min(1e-30))).sum(dim)
    return h / math.log(k) if k > 1 else h


def max_prob_uncertainty(prob: Tensor) -> tuple[Tensor, Tensor]:
    """``(1 - max_k p_k, argmax_k p_k)`` over the class dimension 1."""
    conf, pred = prob.max(dim=1)
    return 1.0 - conf, pred


class MeanOfPasses:
    """Streaming mean of softmax probabilities over passes, with the mean per-pass entropy, so the
    mutual information H(mean p) - mean H(p) needs no stack of passes in memory."""

    def __init__(self) -> None:
        self.sum_prob: Tensor | None = None
        self.sum_entropy: Tensor | None = None
        self.n = 0

    def add(self, prob: Tensor) -> None:
        h = entropy(prob)
        self.sum_prob = prob.clone() if self.sum_prob is None else self.sum_prob + prob
        self.sum_entropy = h if self.sum_entropy is None else self.sum_entropy + h
        self.n += 1

    @property
    def mean(self) -> Tensor:
        assert self.sum_prob is not None, "no pass added"
        return self.sum_prob / self.n

    def scores(self, prefix: str, max_name: str) -> dict[str, tuple[Tensor, Tensor]]:
        """``{max_name: 1 - max mean p, <prefix>_entropy: H(mean p), <prefix>_mutual_information}``,
        each with the argmax of the mean."""
        mean = self.mean
        u, pred = max_prob_uncertainty(mean)
        h_mean = entropy(mean)
        mi = (h_mean - self.sum_entropy / self.n).clamp_min(0.0)
        return {max_name: (u, pred), f"{prefix}_entropy": (h_mean, pred), f"{prefix}_mutual_information": (mi, pred)}


def deterministic_scores(logits: Tensor, temperature: float | None) -> dict[str, tuple[Tensor, Tensor]]:
    """The one-pass scores from logits ``(B, K, *spatial)``."""
    z = logits.float()
    prob = z.softmax(dim=1)
    u, pred = max_prob_uncertainty(prob)
    k = prob.shape[1]
    top = prob.topk(min(2, k), dim=1).values
    gap = top[:, 0] - top[:, 1] if k > 1 else top[:, 0]
    logit_top = z.topk(min(2, k), dim=1).values
    logit_gap = logit_top[:, 0] - logit_top[:, 1] if k > 1 else torch.full_like(z[:, 0], torch.inf)
    gini = 1.0 - (prob * prob).sum(dim=1)
    out = {"max_softmax": (u, pred), "entropy": (entropy(prob), pred),
           "margin": (1.0 - gap, pred),
           "logit_margin": (torch.sigmoid(-logit_gap), pred),
           "doctor": ((gini / (1.0 - 1.0 / k)).clamp(0.0, 1.0) if k > 1 else gini, pred),
           "max_logit": (torch.sigmoid(-z.max(dim=1).values), pred),
           "energy": (torch.sigmoid(-torch.logsumexp(z, dim=1)), pred)}
    if temperature is not None:
        out["temperature"] = (1.0 - (logits.float() / temperature).softmax(dim=1).max(dim=1).values, pred)
    return out
