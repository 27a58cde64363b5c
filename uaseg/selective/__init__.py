"""Exact evaluation of selective segmentation (refer uncertain voxels to a radiologist).

Modules: ``dice_curve`` (exact Dice risk-coverage curve), ``voxel_rc`` (fd-shifts
AURC / E-AURC / AUGRC), ``case_level`` (case failure detection), ``coverage``
(exact or quantised coverage index), ``case_stats`` (per-case sufficient statistics,
quantisation error bound), ``accumulator`` (streaming), ``result`` (the typed result and
the coverage -> threshold rule), ``metric`` (torchmetrics), ``outputs`` / ``format`` / ``plots``;
``case_losses`` / ``risk_control`` / ``risk_check`` (a referral threshold with a guarantee on the
Dice risk: conformal risk control, Learn-then-Test, and the Monte-Carlo check of both).
"""
from .accumulator import SelectiveAccumulator
from .case_level import CASE_AGGREGATIONS, register_case_aggregation
from .dice_curve import dice_risk_coverage
from .format import display_metric, format_risk_control, format_table
from .metric import SelectiveSegmentationMetric
from .outputs import save_case_arrays, write_outputs, write_score_outputs
from .plots import plot_case_panel, plot_dice_coverage, plot_risk_coverage
from .result import FULL_COVERAGE, SelectiveResult, ThresholdGrid, coverage_key
from .voxel_rc import voxel_risk_coverage

__all__ = [
    "dice_risk_coverage", "voxel_risk_coverage", "SelectiveAccumulator", "SelectiveResult",
    "ThresholdGrid", "FULL_COVERAGE", "SelectiveSegmentationMetric", "write_outputs", "write_score_outputs",
    "save_case_arrays", "format_table", "format_risk_control", "display_metric", "plot_risk_coverage", "plot_dice_coverage",
    "plot_case_panel", "coverage_key", "CASE_AGGREGATIONS", "register_case_aggregation",
]
