"""Lightning callbacks of the runner: the test report writer, training progress."""

from uaseg.callbacks.heartbeat import Heartbeat
from uaseg.callbacks.progress import EpochLog, PercentRichProgressBar
from uaseg.callbacks.report_writer import SelectiveReportWriter

__all__ = ["SelectiveReportWriter", "EpochLog", "PercentRichProgressBar", "Heartbeat"]
