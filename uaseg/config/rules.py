"""Rules between config keys that need more than a value's domain, run by
:func:`uaseg.config.check.check_config` after its own :data:`~uaseg.config.check.RULES` -- so
before a run folder is made, and for every job of a multirun before the first starts. Each takes
``get`` (key -> value or None) and returns a one-line message or None."""

from __future__ import annotations

from typing import Any, Callable

from uaseg.errors import ConfigError

#: the built-in generated datasets' own size options (``conf/debug/fast.yaml`` sets them)
DEMO_OPTIONS = ("num_cases", "image_size")


def rule_risk_control(get: Callable[[str], Any]) -> str | None:
    """``eval.risk_control`` as a whole, as the runner reads it after training's set-up: a repeated
    alpha, a method listed twice, ``pvalue=binom`` with a risk that is not 0/1."""
    from uaseg.selective.risk_settings import RiskControlSettings

    try:
        RiskControlSettings.from_config(get("eval.risk_control"))
    except ConfigError as e:
        return str(e)
    return None


def rule_demo_options(get: Callable[[str], Any]) -> str | None:
    """The demo data's size options on a dataset read from files (``debug=fast dataset=nnunet``),
    which its datamodule would refuse only once the dataset is planned."""
    target = str(get("dataset._target_") or "")
    given = [k for k in DEMO_OPTIONS if get(f"dataset.{k}") is not None]
    if not given or not target or target.startswith("uaseg.data.datasets.demo"):
        return None
    return (f"dataset.{given[0]}: an option of the built-in demo data (dataset=demo2d|demo3d|demo3d_abdomen), not of "
            f"{target.rsplit('.', 1)[-1]}; debug=fast sets it and is for the demo data only: for a quick run of "
            "your own data use trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2 "
            "trainer.limit_test_batches=2")


RULES = (rule_risk_control, rule_demo_options)
