"""Third-party chatter kept off the console, real warnings kept on it.

Each rule names one message of one library, so a new warning of the same library still shows:

* Lightning's advertising tips (``💡 Tip: ... litlogger / litmodels``) and its lines about hardware that
  is absent (``TPU available: False``, ``HPU available: False``): INFO records of Lightning's rank-zero
  logger, dropped by a logging filter (a GPU that is present but unused is still reported);
* torch's ``isinstance(treespec, LeafSpec) is deprecated`` FutureWarning, raised inside Lightning's own
  ``lightning.pytorch.utilities._pytree`` (nothing a user can change), ignored for that module only.

Alembic's ``setup plugin ...`` INFO lines (optuna imports it while MONAI loads) are set to WARNING in
``conf/hydra/default.yaml`` (``hydra_logging`` and ``job_logging``).
"""

from __future__ import annotations

import logging
import warnings

#: INFO messages of Lightning that say nothing about this run
LIGHTNING_CHATTER = ("💡 Tip:", "TPU available: False", "HPU available: False")
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        return not str(record.getMessage()).startswith(LIGHTNING_CHATTER)


_FILTER = _DropChatter()


def quiet_third_party() -> None:
    """Install the rules above (idempotent); call before the Trainer is built."""
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
