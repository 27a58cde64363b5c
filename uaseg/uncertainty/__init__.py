"""Test-time uncertainty: the field's baselines next to uncertainty-aware training (one pass,
temperature scaling, flip TTA, MC dropout, deep ensembles), see :mod:`uaseg.uncertainty.scores`."""

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
