"""SIGTERM stops a whole multirun (``hydra.callbacks.sweep_stop`` in ``conf/hydra/default.yaml``).

A scheduler's preemption or a user's ``kill`` means "stop", not "skip to the next job": Hydra's
launcher records the interrupted job as failed and starts the next one. :class:`StopSweepOnSigterm`
notes the signal (Lightning's own handler, which ends ``fit`` at the next step, calls this one too;
outside ``fit`` it raises Lightning's ``SIGTERMException`` itself, which ``train`` turns into a
:class:`~uaseg.errors.TerminatedError` with the run's resume state). When that job ends, the
multirun ends: one line says which job stopped, how to continue it (``python train.py
resume=<job folder>``) and which jobs were not started, and the process exits 1.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf


class StopSweepOnSigterm(Callback):
    """On SIGTERM, end the multirun after the running job instead of starting the next one."""

    def __init__(self) -> None:
        self._jobs: list[list[str]] | None = None
        self._pid: int | None = None
        self._received = False
        self._in_job: DictConfig | None = None
        self._last = -1  # the number of the last job that ended
        self._previous: Any = None
        self._sweep_dir: Path | None = None
        self._handler = self._on_sigterm  # one bound method: identity says whether it is the installed handler

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from uaseg.runs.hydra_callbacks import sweep_jobs

        self._jobs = sweep_jobs(config)
        self._pid = os.getpid()
        self._sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir"))).absolute()
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._restore()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._in_job = config

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from uaseg.errors import TerminatedError

        self._in_job = None
        self._last = int(OmegaConf.select(config, "hydra.job.num", default=self._last + 1))
        if os.getpid() != self._pid:
            return  # a launcher's worker process (joblib): the multirun's own process decides
        error = job_return._return_value if job_return.status == JobStatus.FAILED else None
        if self._received or isinstance(error, TerminatedError):
            self.stop(config, error)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._received = True
        if signal.getsignal(signal.SIGTERM) is not self._handler:
            return  # Lightning's handler is installed (it calls this one): it ends fit at the next step
        if self._in_job is None:
            self.stop(None, None)  # between jobs
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        raise SIGTERMException  # the job's train() records it and says how to resume

    def stop(self, config: DictConfig | None, error: BaseException | None) -> None:
        """Print what stopped and how to go on, release the sweep folder and exit 1."""
        from uaseg.runs.folder import release_run_folder

        print(f"TerminatedError: {self.message(config, error)}", file=sys.stderr, flush=True)
        self._restore()
        if self._sweep_dir is not None:
            release_run_folder(self._sweep_dir)
        sys.exit(1)

    def message(self, config: DictConfig | None, error: BaseException | None) -> str:
        """One line: the job that stopped and how to continue it, then the jobs not started."""
        from uaseg.errors import TerminatedError, describe

        jobs = self._jobs
        if config is None:
            num, text = self._last, "the multirun was stopped by SIGTERM between jobs"
        else:
            num = int(OmegaConf.select(config, "hydra.job.num", default=0))
            folder = Path(str(OmegaConf.select(config, "hydra.runtime.output_dir")))
            if error is None:
                text = f"the multirun was stopped by SIGTERM; job {num} had finished ({folder})"
            else:
                how = (f"continue it with: {shlex.join(['python', 'train.py', f'resume={folder}'])}"
                       if (folder / "checkpoints" / "last.ckpt").is_file() else
                       "it saved no checkpoint: run it again with python train.py <its overrides>")
                text = f"the multirun was stopped by SIGTERM in job {num} ({folder}); {how}"
                if not isinstance(error, TerminatedError):
                    text += f" (the job ended with {describe(error)})"
        if jobs is None:
            return text + "; its later jobs were not started (run the multirun again with another hydra.sweep.dir)"
        rest = jobs[num + 1:]
        if not rest:
            return text + "; it was the multirun's last job"
        return (text + f"; the {len(rest)} later job(s) of {len(jobs)} were not started: run each with python "
                f"train.py <its overrides>, the next one: {shlex.join(['python', 'train.py', *rest[0]])}")

    def _restore(self) -> None:
        if self._previous is not None and signal.getsignal(signal.SIGTERM) is self._handler:
            signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
