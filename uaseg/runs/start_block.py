"""The first lines of a run, printed before any work (demo data generation, file checks, training):
where the run writes, on what data, with which model, loss, epochs and device. On a busy machine the
first epoch can take many minutes; these lines say at once that the run started and what it does.

Everything here reads the config only (no dataset file is opened): the built-in datasets' split
sizes follow from their settings, other datasets are named by their folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from uaseg.config.identity import run_identity


def split_sizes(dataset: Any) -> dict[str, int] | None:
    """Cases per split of a built-in dataset (``num_cases`` generated cases), by the same split
    functions the datamodule uses; None for a dataset read from files (counted when read)."""
    from uaseg.data.splits import carve_validation, make_folds

    get = lambda key: OmegaConf.select(dataset, key, default=None)  # noqa: E731
    n, folds, fold = get("num_cases"), get("num_folds"), get("fold")
    if n is None or folds is None or fold is None:
        return None
    try:
        ids = [f"{i:06d}" for i in range(int(n))]
        split = make_folds(ids, int(folds), int(get("data_seed") or 0))[int(fold)]
        train, val = carve_validation(split["train"], float(get("val_fraction")), int(get("data_seed") or 0))
    except Exception:  # an impossible split is reported by the datamodule, with its own message
        return None
    return {"train": len(train), "val": len(val), "test": len(split["test"])}


def describe_dataset(cfg: Any, name: str) -> str:
    sizes = split_sizes(cfg.dataset)
    fold = OmegaConf.select(cfg, "dataset.fold", default=None)
    folds = OmegaConf.select(cfg, "dataset.num_folds", default=None)
    where = f", fold {fold} of {folds}" if fold is not None and folds is not None else ""
    if sizes is not None:
        n = OmegaConf.select(cfg, "dataset.num_cases")
        size = OmegaConf.select(cfg, "dataset.image_size", default=None)
        dims = OmegaConf.select(cfg, "dataset.meta.spatial_dims", default=2)
        shape = "" if not size else f" of {size}x{size} px" if dims == 2 else f" of {size}^3 voxels"
        return (f"{name} (built in, generated on first use), {n} cases{shape}: "
                f"{sizes['train']} train / {sizes['val']} val / {sizes['test']} test{where}")
    root = OmegaConf.select(cfg, "dataset.root", default=None, throw_on_missing=False)
    return f"{name} in {root}{where} (cases counted when the files are read)"


def describe_device(trainer: Any) -> str:
    """What ``trainer.accelerator`` will use; ``auto`` resolved as Lightning resolves it here."""
    import torch

    accelerator = str(OmegaConf.select(trainer, "accelerator", default="auto"))
    devices = OmegaConf.select(trainer, "devices", default=1)
    precision = OmegaConf.select(trainer, "precision", default=None)
    cuda = torch.cuda.is_available()
    if accelerator in ("auto", "gpu", "cuda"):
        if cuda:
            name = torch.cuda.get_device_name(0)
            return f"GPU ({name}) x {devices}, precision {precision} (trainer.accelerator={accelerator})"
        if accelerator == "auto":
            return f"CPU, {torch.get_num_threads()} threads (trainer.accelerator=auto: no GPU found)"
    return f"{accelerator} x {devices}, precision {precision}"


def start_block(cfg: Any, out: Path) -> str:
    """The run's start block (a few lines; units as in the closing block)."""
    ident = run_identity(cfg)
    loss_choice = None
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            loss_choice = HydraConfig.get().runtime.choices.get("loss")
    except Exception:
        pass
    target = str(OmegaConf.select(cfg, "loss._target_", default="") or "").rsplit(".", 1)[-1]
    lam = ident.get("lambda")
    loss = f"{loss_choice or target}" + (f", λ = {lam:g}" if isinstance(lam, (int, float)) else "")
    if isinstance(lam, (int, float)):
        loss += " (the baseline: no ranking term)" if lam == 0 else (
            f" (margin {ident.get('margin')}, sampling {ident.get('sampling')})")
    net = str(OmegaConf.select(cfg, "model.net._target_", default="") or "").rsplit(".", 1)[-1]
    dims = OmegaConf.select(cfg, "dataset.meta.spatial_dims", default=None, throw_on_missing=False)
    filters = OmegaConf.select(cfg, "model.net.filters", default=None)
    details = [x for x in (net, f"{dims}-D" if dims else None,
                           f"filters {list(filters)}" if filters is not None else None) if x]
    model = f"{ident.get('model') or net or '?'}" + (f" ({', '.join(details)})" if details else "")
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    limits = [f"{k}={v}" for k in ("max_steps", "limit_train_batches", "fast_dev_run")
              if (v := OmegaConf.select(cfg, f"trainer.{k}", default=None)) not in (None, -1, False)]
    resume = cfg.get("resume")
    lines = [
        f"{'Resuming' if resume else 'Starting'} run: {out}",
        f"  dataset: {describe_dataset(cfg, ident.get('dataset') or '?')}",
        f"  model:   {model}",
        f"  loss:    {loss}",
        f"  epochs:  {epochs}" + (f" ({', '.join(limits)})" if limits else "")
        + f", seed {cfg.get('seed')}" + ("" if cfg.get("train", True) else "; train=false: test only"),
        f"  device:  {describe_device(cfg.trainer)}",
    ]
    return "\n".join(lines)


def announce_start(cfg: Any, out: Path) -> None:
    """Quiet third-party chatter (:mod:`uaseg.runs.quiet`), then log the start block once (rank 0)."""
    import logging

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from uaseg.runs.quiet import quiet_third_party

    quiet_third_party()
    if rank_zero_only.rank == 0:
        logging.getLogger("uaseg.train").info("%s", start_block(cfg, out))


def next_commands(cfg: Any, out: Path) -> str:
    """The closing block's "next:" commands: for a built-in dataset, export this run's own test cases
    (its dataset keys, e.g. ``num_cases=10 image_size=48`` after ``debug=fast``) and segment them."""
    from uaseg.data.datasets.export_demo import export_command

    export = export_command(cfg.dataset)
    if export is None:
        return f"python predict.py ckpt={out} input=<images> output=<folder> coverage=0.9"
    return f"{export}; python predict.py ckpt={out} input=outputs/demo_input output=outputs/demo_pred coverage=0.9"
