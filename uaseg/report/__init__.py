"""Multirun report: the paper's Table 1, paired tests, Fig. 2/3 and sweep plots from run folders.

``uaseg report <multirun folder>`` (or ``python scripts/report.py``) reads every ``summary.json``
below the folder, groups runs by setting (:mod:`uaseg.report.grouping` states the rule), matches
each λ > 0 arm with its λ = 0 baseline, and writes ``report.md``, ``report.csv`` and ``figures/``
(with learning curves per arm from the runs' ``csv/metrics.csv``: :mod:`uaseg.report.curves`).
Analysis only reads run folders, so it can run while a sweep is still going.
"""
from .build import Report, build_report
from .collect import Problem, Run, collect
from .grouping import Comparison, compare

__all__ = ["Report", "build_report", "Run", "Problem", "collect", "Comparison", "compare"]
