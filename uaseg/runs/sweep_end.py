"""The last lines of a multirun (a Hydra callback, ``hydra.callbacks.sweep_summary``): how many jobs
finished, which failed and why (one line each), and the ``uaseg report`` command for the sweep folder.
The jobs are counted from their folders, as ``uaseg report`` counts them (:func:`uaseg.report.collect`),
so the numbers agree whichever launcher ran them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

#: failed jobs listed by name (the rest: the report's "Jobs without a summary")
MAX_LISTED = 5


def sweep_summary(root: Path) -> str:
    from uaseg.report.collect import collect

    runs, problems = collect(root)
    failed = [p for p in problems if p.status == "failed"]
    lines = [f"Multirun finished: {len(runs) + len(problems)} jobs in {root}: {len(runs)} done, "
             f"{len(failed)} failed" + (f", {len(problems) - len(failed)} without a result (killed or still "
                                        "running)" if len(problems) > len(failed) else "")]
    for p in failed[:MAX_LISTED]:
        error = " ".join(str(p.error or "").split())
        lines.append(f"  failed: {p.path.name}: {error[:200]}")
    if len(failed) > MAX_LISTED:
        lines.append(f"  ... and {len(failed) - MAX_LISTED} more failed jobs (see the report)")
    lines.append(f"Next: uaseg report {root}   (Table 1, paired tests and figures in {root}/report.md)")
    return "\n".join(lines)


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = OmegaConf.select(config, "hydra.sweep.dir")
        if folder and Path(str(folder)).is_dir():
            print(sweep_summary(Path(str(folder))), flush=True)
