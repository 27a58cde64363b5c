"""Test-time uncertainty: the field's baselines next to uncertainty-aware training (one pass,
temperature scaling, margin, DOCTOR, max logit, energy, a ConfidNet head, flip TTA, MC dropout, deep
ensembles), see :mod:`uaseg.uncertainty.scores` and :mod:`uaseg.uncertainty.confidnet`."""

from uaseg.uncertainty.scores import (
    RUN_FAMILIES,
    SCORES,
    MeanOfPasses,
    Score,
    check_scores,
    deterministic_scores,
    entropy,
    max_prob_uncertainty,
)

__all__ = ["SCORES", "RUN_FAMILIES", "Score", "MeanOfPasses", "check_scores", "deterministic_scores", "entropy",
           "max_prob_uncertainty"]
