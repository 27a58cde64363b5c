"""The stages after training, one module each, behind one interface (:mod:`uaseg.stages.base`):
risk calibration, temperature, confidence head, validation curves and the test report.
``uaseg/train.py`` runs them in its listed order (``STAGES``); nothing below the runner and the CLI
imports this package."""

from uaseg.stages.base import Stage, StageContext, run_stages, wall_clock
from uaseg.stages.confidence_head import ConfidenceHead
from uaseg.stages.risk_calibration import RiskCalibration
from uaseg.stages.temperature import Temperature
from uaseg.stages.test_report import TestReport
from uaseg.stages.val_curves import ValCurves

__all__ = ["Stage", "StageContext", "run_stages", "wall_clock", "RiskCalibration", "Temperature", "ConfidenceHead",
           "ValCurves", "TestReport"]
