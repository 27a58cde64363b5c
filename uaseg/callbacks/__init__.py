"""Lightning callbacks of the runner: the test report writer."""

from uaseg.callbacks.report_writer import SelectiveReportWriter

__all__ = ["SelectiveReportWriter"]
