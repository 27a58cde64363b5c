#!/usr/bin/env python
"""Report of a (partial) multirun: same as ``uaseg report``.

    python scripts/report.py outputs/train/multiruns/<date>      # report.md, report.csv, figures/
    python scripts/report.py <folder> --out reports/ --force     # elsewhere, overwriting

Exit code 0 when some summary.json was found, 1 when none was.
"""
import sys

from uaseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
