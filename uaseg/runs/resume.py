"""``resume=<run folder>``: that run's own config, read as untrusted data.

A run folder may come from someone else, so its ``.hydra/config.yaml`` is checked before anything
in it is resolved or built: every interpolation calls only the resolvers of uaseg's ``conf/``
(:func:`uaseg.config.interpolation.check_resolvers`), every ``_target_`` is a class uaseg configures
(:func:`uaseg.runs.trust.check_targets`), and every folder it would write to -- checkpoints, logger
folders, the trainer's root, a report writer's folder, the dataset cache -- lies inside the run
folder (the cache: inside it or this machine's ``paths.cache_dir``). ``paths`` and
``trust_checkpoint`` are this command's, never the stored file's; a key given on this command line
is the user's own choice and is not checked. ``trust_checkpoint=true`` turns each refusal into a
warning.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from uaseg.errors import CheckpointError, ConfigError, RunFolderError, UserError, describe, first_cause

log = logging.getLogger(__name__)

#: keys that name a folder a run writes into (Lightning's callbacks, loggers and Trainer, uaseg's
#: report writer), checked in every node but ``paths`` (this command's) and ``dataset`` (its ``root``
#: is read; its ``cache_dir`` is checked on its own)
WRITE_KEYS = ("dirpath", "save_dir", "dir", "default_root_dir", "log_dir", "root_dir", "tracking_uri", "output_dir")
#: keys Lightning joins onto that folder (``<save_dir>/<name>/<version>``, ``<dirpath>/<filename>``)
JOINED_KEYS = ("name", "version", "sub_dir", "filename")


def resumed_config(cfg: DictConfig) -> DictConfig:
    """``resume=<run folder>``: that run's own config, checked (module docstring), plus this
    command's value overrides (e.g. ``trainer.max_epochs=20`` to train longer)."""
    from uaseg.config.moved import current_targets
    from uaseg.config.interpolation import check_resolvers
    from uaseg.runs.trust import check_targets

    folder = Path(cfg.resume)
    saved = folder / ".hydra" / "config.yaml"
    try:
        resumed = OmegaConf.load(saved)
    except FileNotFoundError:
        raise RunFolderError(f"resume={folder}: {saved} not found (is this a uaseg run folder?)") from None
    except Exception as e:  # a damaged YAML file
        raise ConfigError(f"resume={folder}: cannot read {saved} ({describe(e)})") from None
    if not isinstance(resumed, DictConfig):
        raise ConfigError(f"resume={folder}: {saved} is not a mapping of config values")
    trust = bool(cfg.get("trust_checkpoint"))
    check_resolvers(resumed, saved, trust)  # before anything resolves or builds
    check_targets(resumed, saved, trust)
    resumed = OmegaConf.create(current_targets(OmegaConf.to_container(resumed, resolve=False)))  # uaseg.config.moved
    extra = []
    try:
        from hydra.core.hydra_config import HydraConfig

        extra = [o for o in HydraConfig.get().overrides.task if not o.startswith("resume=")]
    except ValueError:
        pass
    groups = [o for o in extra if "=" in o and "." not in o.split("=", 1)[0].lstrip("+~")]
    if groups:
        raise ConfigError(f"resume: config-group overrides {groups} cannot change a run being resumed")
    resumed.merge_with(OmegaConf.from_dotlist([o.lstrip("+") for o in extra]))
    resumed.resume = str(folder)
    resumed.paths = cfg.paths  # this machine's folders (the run's own output_dir among them)
    resumed.trust_checkpoint = trust  # the user's word, never the file's
    own = {o.split("=", 1)[0].lstrip("+~") for o in extra if "=" in o}
    check_write_paths(resumed, folder, saved, own, trust)
    return resumed


def check_write_paths(cfg: DictConfig, folder: Path, source: Path, own: set[str] = frozenset(),
                      trust: bool = False) -> None:
    """A :class:`CheckpointError` naming ``source`` and the key of the first folder ``cfg`` would
    write into outside ``folder`` (``dataset.cache_dir``: outside ``folder`` and ``paths.cache_dir``);
    with ``trust`` a warning. Keys in ``own`` (and below them) were given by the user and are not
    checked. The cache is checked first: resolving ``dataset.plan`` writes a fingerprint there."""
    def given(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in own)

    def refuse(text: str) -> None:
        if not trust:
            raise CheckpointError(f"{source}: {text}")
        log.warning("%s: %s; written there anyway because trust_checkpoint=true", source, text.split(";")[0])

    cache = _select(cfg, "dataset.cache_dir", source)
    if cache is not None and not given("dataset.cache_dir"):
        mine = _select(cfg, "paths.cache_dir", source)
        if not any(_inside(cache, base) for base in (folder, mine) if base):
            refuse(f"dataset.cache_dir={cache!r} is outside the run folder and this machine's paths.cache_dir "
                   f"({mine}); a resumed run writes only there (pass dataset.cache_dir=... on the command line to "
                   "choose another cache)")
    for group in [str(k) for k in cfg if k not in ("paths", "dataset")]:
        node = _select(cfg, group, source)
        for key, value, written, within in _write_paths(node, group):
            if given(key) or _inside(written, folder if within is None else within):
                continue
            what = f"is outside the run folder {folder}" if within is None else f"steps out of {within} ({written})"
            refuse(f"{key}={value!r} {what}; a resumed run writes only into its own folder (pass {key}=... on the "
                   "command line to choose another place)")
    # left out, these fall back to the working directory (Lightning's Trainer, W&B and MLflow loggers)
    unset = [] if given("trainer.default_root_dir") or _select(cfg, "trainer.default_root_dir", source) else [
        "trainer.default_root_dir"]
    loggers = _select(cfg, "logger", source)
    unset += [f"logger.{name}.save_dir" for name, node in (loggers.items() if isinstance(loggers, dict) else ())
              if isinstance(node, dict) and "_target_" in node and not (node.get("save_dir") or node.get("dir"))
              and not given(f"logger.{name}.save_dir")]
    for key in unset:
        refuse(f"{key} is not set, so the resumed run would write into the working directory; a resumed run writes "
               f"only into its own folder (pass {key}=... on the command line)")


def _select(cfg: DictConfig, key: str, source: Path) -> Any:
    try:
        value = OmegaConf.select(cfg, key, default=None)
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception as e:  # an interpolation that does not resolve (checked: no resolver ran code)
        cause = first_cause(e, UserError)  # e.g. the dataset plan's own one line
        if cause is not None:
            raise type(cause)(str(cause)) from e
        raise CheckpointError(f"{source}: {key} cannot be resolved ({describe(e)})") from None


def _write_paths(node: Any, path: str):
    """``(key, value, path written, folder it must stay in)`` of every folder the nested dicts/lists
    ``node`` name with :data:`WRITE_KEYS` (None: the run folder), and of the :data:`JOINED_KEYS`
    beside it (joined onto that folder, which they may not step out of)."""
    if isinstance(node, dict):
        for key in WRITE_KEYS:
            value = node.get(key)
            if value is None:
                continue
            yield f"{path}.{key}", value, value, None
            joined = str(value)
            for name in JOINED_KEYS:
                if node.get(name) not in (None, "") and isinstance(value, str):
                    joined = str(Path(joined, str(node[name])))
                    yield f"{path}.{name}", node[name], joined, value
        for key, value in node.items():
            yield from _write_paths(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _write_paths(value, f"{path}[{i}]")


def _inside(value: Any, base: Any) -> bool:
    """Whether the local path ``value`` (relative: to the working directory) lies in ``base``, links
    and ``..`` resolved; a URL other than ``file:`` never does."""
    if not isinstance(value, (str, Path)):
        return False
    text = str(value)
    if text.startswith("file:"):
        text = text[len("file://"):] if text.startswith("file://") else text[len("file:"):]
    elif "://" in text:
        return False
    return Path(text).expanduser().resolve().is_relative_to(Path(str(base)).expanduser().resolve())


def own_checkpoint(best: str, dirpath: str | None) -> str:
    """The best checkpoint Lightning reports after ``fit``, as a file of the checkpoint folder
    ``dirpath``: ``ModelCheckpoint`` restores ``best_model_path`` from the checkpoint training
    started from (a stored string), which must not make the run test, calibrate and rewrite a file
    elsewhere. A moved folder's recorded path gives way to its own file of that name."""
    if not best or dirpath is None or _inside(best, dirpath):
        return best
    own = Path(dirpath) / Path(best).name
    if own.is_file():
        return str(own)
    raise CheckpointError(f"the checkpoint training started from records its best checkpoint as {best}, outside this "
                          f"run's checkpoint folder {dirpath}; refused (it would be tested and rewritten)")
