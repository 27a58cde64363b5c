"""OmegaConf resolvers the configs use (``${uaseg.<name>:...}``); registered on import.

They answer questions a YAML file cannot: is there a W&B account (else log offline, never prompt),
which multirun does this job belong to, where does a resumed run keep its new Hydra files, and
what is the preprocessing plan of a dataset in the nnU-Net or Decathlon layout (``dataset_plan``).
"""

from __future__ import annotations

import netrc
import os
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """Offline unless the user configured W&B credentials (env or ``wandb login``) or a mode."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
        return netrc.netrc(path).authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def job_name() -> str | None:
    """A run is named by its command-line overrides (``dataset.fold=0,loss.lambda=2``)."""
    hc = _hydra()
    name = hc.job.override_dirname if hc else ""
    return name or None


def job_group() -> str | None:
    """All jobs of one multirun share a group: the multirun folder's name."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir).name


def run_dir(resume: str | None, fresh: str) -> str:
    """A resumed run works in its own folder; a new run gets a fresh one."""
    return str(resume) if resume else fresh


def job_subdir(num: int, overrides: str) -> str:
    """A multirun job's folder: its number and overrides, made filesystem-safe and short enough
    (file names cannot exceed 255 bytes; the full overrides stay in ``.hydra/overrides.yaml``)."""
    name = f"{num}_{overrides}".replace("/", "_")
    return name if len(name) <= 120 else name[:110] + "..." + name[-7:]


def hydra_subdir(resume: str | None) -> str:
    """Where Hydra writes its config copy: a resumed run must not overwrite the original's."""
    return f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}" if resume else ".hydra"


def dataset_plan(target: str, root: str, cache_dir, spacing, orientation: str, max_patch_size_2d,
                 max_patch_size_3d, strides=None) -> dict:
    """The preprocessing plan of a dataset in a standard layout (nnU-Net, Decathlon): the datamodule
    class ``target`` reads its ``dataset.json`` and fingerprint (see ``uaseg/data/plan/fingerprint.py``);
    ``strides`` (``model.net.strides``) decide what the patch sides are multiples of."""
    import re

    from hydra.utils import get_class

    from uaseg.config.moved import current_target
    from uaseg.errors import ConfigError

    target = current_target(target)
    # the name is checked before anything is imported: only uaseg.data's own modules are
    if not re.fullmatch(r"uaseg\.data(\.[a-z_][a-z0-9_]*)+\.[A-Z][A-Za-z0-9_]*", str(target)):
        raise ConfigError(f"uaseg.dataset_plan: {target!r} is not a uaseg datamodule")
    try:
        cls = get_class(target)
    except Exception:
        raise ConfigError(f"uaseg.dataset_plan: {target!r} cannot be imported (no such uaseg datamodule)") from None
    if not hasattr(cls, "make_plan"):
        raise ConfigError(f"uaseg.dataset_plan: {target!r} is not a datamodule of a standard layout")
    plain = lambda v: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v  # noqa: E731
    return cls.make_plan(str(root), cache_dir, plain(spacing), orientation, plain(max_patch_size_2d),
                         plain(max_patch_size_3d), plain(strides))


def divide(total, parts) -> float:
    """``${uaseg.divide:${trainer.max_epochs},3}``: a share of another value (a warm-up over the first
    third of training, whatever its length)."""
    return float(total) / float(parts)


def get(node, *keys: str):
    """``${uaseg.get:${dataset.plan},meta,in_channels}``: a value inside a resolver's result
    (OmegaConf cannot select into an interpolation that a resolver produced)."""
    for key in keys:
        node = node[key]
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


for _name, _fn in {
    "wandb_offline": wandb_offline,
    "job_name": job_name,
    "job_group": job_group,
    "run_dir": run_dir,
    "job_subdir": job_subdir,
    "hydra_subdir": hydra_subdir,
    "dataset_plan": dataset_plan,
    "get": get,
    "divide": divide,
}.items():
    OmegaConf.register_new_resolver(f"uaseg.{_name}", _fn, replace=True)
