#!/usr/bin/env python
"""Time per training step: the full runner (Lightning Trainer) vs. a bare PyTorch loop.

Both sides are built from the project's real config (``conf/train.yaml`` composed with
``dataset=demo3d``, patch ``--size``^3, ``--batch`` patches per step drawn from one image,
``loss.lambda=2 loss.sampling=exact``, ``model=unet`` = the paper's 3D U-Net) through the two
public builders ``uaseg.train.build_datamodule`` and ``uaseg.train.build_module``:

* runner: a ``lightning.Trainer`` instantiated from ``cfg.trainer`` (``trainer=cpu`` or
  ``trainer=gpu``) with the config's callbacks (checkpoint, Rich progress bar, LR monitor) and CSV
  logger, as ``uaseg.train`` builds it, fitting ``SelectiveSegModule`` (its ``training_step``:
  MetaTensor unwrapping, the ``isfinite`` check, ``train/*`` logging) on the datamodule.
  Validation and test are off (``limit_val_batches=0``, ``num_sanity_val_steps=0``),
  ``max_steps = warmup + steps``.
* bare: the same network (same initial weights: both load one saved ``state_dict``), the same
  loss class built from the same config, the same optimizer (the module's
  ``configure_optimizers``), iterating the SAME datamodule's ``train_dataloader()``::

      logits = net(image.as_tensor()); total, _ = loss(logits, label)
      opt.zero_grad(); total.backward(); opt.step()

What is timed, and why it is fair: a step is the interval from the end of the previous training
step to the end of this one (``on_train_batch_end`` in the runner, after ``opt.step()`` in the
bare loop; ``torch.cuda.synchronize()`` at each point on CUDA). Such an interval contains exactly
one batch fetch (the same loader, transforms and collation on both sides), the host-to-device
copy, forward, loss, backward and optimizer step, and, in the runner, everything Lightning does
per step before and after it (hooks, ``self.log`` bookkeeping, progress-bar refresh, logger writes
every ``log_every_n_steps``, the ``isfinite`` host sync). So the ratio runner/bare is the per-step
price of the framework and nothing else. The first ``--warmup`` steps of every fit / loop are not
timed (allocator and thread-pool warm-up, lazy initialisation), nor are ``--prewarm`` bare steps
before everything (a process's first steps are slower whichever side runs them); fixed costs of a
fit (Trainer construction, setup, the checkpoint written at the end) are not per-step costs (with
``--interleave round`` they show as the wall time per fit). "compute" is the part of a step from
``on_train_batch_start`` (batch already on the device) to ``on_train_batch_end``; "between" is the
rest (data loading plus the loop's own work outside the step).

Both sides run in one process, from the same initial weights and seed. By default
(``--interleave step``) they alternate step by step: inside each runner fit, a callback runs one
bare step right after every runner step, outside the runner's timed intervals, so step k of the
runner and step k of the bare loop see the same machine state; "extra per step" is the median of
those paired differences. This matters on a shared machine: with as many compute threads as cores,
another busy process stalls OpenMP barriers and a step can take several times as long for a while,
which whole-fit alternation (``--interleave round``: runner, bare, bare, runner, ...) only averages
out over many rounds (``--threads`` below the core count also steadies the numbers). The ratio
reported against the 1.10x target is of the medians of all timed steps. Rows of ``--variants``
repeat the runner with parts of it switched off, to show where an overhead comes from.

    python scripts/bench_train.py --warmup 2 --steps 5 --rounds 2            # CPU, the issue's setting
    python scripts/bench_train.py --device cuda --precision bf16-mixed --steps 50 --rounds 3
    python scripts/bench_train.py --size 16 --model unet_small --threads 1 --steps 40 \
        --variants runner,no-progress-bar,no-logger,no-checkpoint,minimal   # the fixed per-step cost

``--losses NAMES`` (``scripts/bench_train_losses.py``) answers another question: the cost of each loss
preset in a bare training step, the arms interleaved step by step from the same weights:

    python scripts/bench_train.py --losses baseline,uncertainty_aware,one_pass,multiclass --steps 10
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's package, to match this checkout's conf/
    sys.path.insert(0, str(ROOT))

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict

from uaseg.train import build_datamodule, build_module

TARGET = 1.10

#: runner variants: config overrides on top of the runner's own (for --variants)
VARIANTS: dict[str, list[str]] = {
    "runner": [],
    "no-progress-bar": ["callbacks.progress_bar=null", "++trainer.enable_progress_bar=false"],
    "no-logger": ["logger=none", "callbacks.lr_monitor=null"],  # the LR monitor needs a logger
    "no-checkpoint": ["callbacks.model_checkpoint=null", "++trainer.enable_checkpointing=false"],
    "minimal": ["~callbacks", "logger=none", "++trainer.enable_progress_bar=false",
                "++trainer.enable_checkpointing=false"],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def usage() -> tuple[float, float, int]:
    """(user CPU s, system CPU s, minor page faults) of the whole process, all threads."""
    if resource is None:
        return (0.0, 0.0, 0)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return (ru.ru_utime, ru.ru_stime, ru.ru_minflt)


class Timing:
    """Per step k: ``begins[k]`` (the previous step's end, or where this side resumed after the
    other side's interleaved step), ``starts[k]`` (batch fetched and on the device) and ``ends[k]``,
    with ``usage()`` at the begin and the end."""

    def __init__(self) -> None:
        self.begins: list[float] = []
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.u_begins: list[tuple] = []
        self.u_ends: list[tuple] = []
        self.wall = 0.0  # whole fit / loop, warm-up steps and fixed costs included

    def begin(self, t: float | None = None, u: tuple | None = None) -> None:
        self.begins.append(time.perf_counter() if t is None else t)
        self.u_begins.append(usage() if u is None else u)

    def end(self) -> None:
        self.ends.append(time.perf_counter())
        self.u_ends.append(usage())

    def steps(self, warmup: int) -> list[float]:
        return [e - b for b, e in zip(self.begins[warmup:], self.ends[warmup:])]

    def compute(self, warmup: int) -> list[float]:
        return [e - s for s, e in zip(self.starts[warmup:], self.ends[warmup:])]

    def usage_steps(self, warmup: int) -> list[tuple]:
        return [tuple(b - a for a, b in zip(u0, u1)) for u0, u1 in zip(self.u_begins[warmup:], self.u_ends[warmup:])]


class BareLoop:
    """The bare PyTorch side: the module's network, loss and optimizer, driven by hand over the
    datamodule's ``train_dataloader()`` (re-iterated each epoch, as Lightning does)."""

    def __init__(self, cfg: DictConfig, datamodule, init_state: dict, device: torch.device, precision: str):
        module = fresh_module(cfg, init_state)
        self.device = device
        self.net, self.loss = module.net.to(device).train(), module.loss.to(device)
        opt = module.configure_optimizers()  # the config's optimizer over the same parameters
        self.opt = opt["optimizer"] if isinstance(opt, dict) else opt
        self.amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
        datamodule.setup("fit")
        self.loader = datamodule.train_dataloader()
        self.epoch, self.it = 0, iter(self.loader)
        self.timing = Timing()

    def next_batch(self) -> dict:
        while True:
            try:
                return next(self.it)
            except StopIteration:
                self.epoch, self.it = self.epoch + 1, iter(self.loader)

    @torch.enable_grad()
    def step(self) -> None:
        t, dev = self.timing, self.device
        t.begin()
        batch = self.next_batch()
        image = batch["image"].as_tensor().to(dev, non_blocking=True)
        label = batch["label"].as_tensor().to(dev, non_blocking=True)
        sync(dev)
        t.starts.append(time.perf_counter())
        with torch.autocast(dev.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
            logits = self.net(image)
            total, _ = self.loss(logits, label, epoch=self.epoch)
        self.opt.zero_grad()
        if self.scaler is None:
            total.backward()
            self.opt.step()
        else:
            self.scaler.scale(total).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        sync(dev)
        t.end()


class StepTimer(Callback):
    """Stamps the runner's steps (synchronised on CUDA); with ``bare``, runs one bare step right
    after each runner step, outside the runner's intervals."""

    def __init__(self, device: torch.device, bare: BareLoop | None = None) -> None:
        self.device, self.bare = device, bare
        self.timing = Timing()
        self._resume: tuple | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._resume = (time.perf_counter(), usage())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        sync(self.device)
        self.timing.begin(*self._resume)
        self.timing.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(self.device)
        self.timing.end()
        if self.bare is not None:
            self.bare.step()
        self._resume = (time.perf_counter(), usage())


def _compose(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def compose_cfg(args: argparse.Namespace, out: Path, cache: Path, extra: list[str] = (),
                loss: str | None = None) -> DictConfig:
    """``conf/train.yaml`` with the benchmark's overrides, then ``--override``, then ``extra``; with
    ``loss`` that preset as it is (``--lambda`` / ``--sampling`` are for the runner comparison)."""
    dims = int(_compose([f"dataset={args.dataset}"]).dataset.meta.spatial_dims)
    overrides = [
        f"dataset={args.dataset}",
        f"dataset.patch_size=[{','.join([str(args.size)] * dims)}]",
        f"dataset.batch_size={args.batch}",
        f"dataset.samples_per_image={args.samples_per_image or args.batch}",
        "dataset.num_workers=0",
        f"model={args.model}",
        *([f"loss={loss}"] if loss else
          ["loss=uncertainty_aware", f"loss.lambda={args.lam}", f"loss.sampling={args.sampling}"]),
        f"trainer={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"trainer.precision={args.precision}",
        f"++trainer.max_steps={args.warmup + args.steps}",
        *([] if loss else ["trainer.max_epochs=-1"]),  # a preset's warm-up is a fraction of max_epochs
        "trainer.limit_val_batches=0",
        "trainer.num_sanity_val_steps=0",
        "test=false",
        f"seed={args.seed}",
        *args.override,
        *extra,
    ]
    cfg = _compose(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.cache_dir = str(cache)
    return cfg


def fresh_module(cfg: DictConfig, init_state: dict):
    module = build_module(cfg)
    module.load_state_dict(init_state)
    return module


def run_runner(cfg: DictConfig, datamodule, init_state: dict, device: torch.device,
               bare: BareLoop | None = None) -> Timing:
    """One ``trainer.fit`` as ``uaseg.train`` runs it (seed, module, callbacks, loggers, Trainer)."""
    t0 = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    model = fresh_module(cfg, init_state)
    timer = StepTimer(device, bare)
    groups = [cfg.get("callbacks"), cfg.get("logger")]
    callbacks, loggers = ([instantiate(c) for c in (g or {}).values() if c is not None and "_target_" in c]
                          for g in groups)
    trainer = instantiate(cfg.trainer, callbacks=[timer, *callbacks], logger=loggers or False)
    trainer.fit(model, datamodule=datamodule)
    sync(device)
    timer.timing.wall = time.perf_counter() - t0
    return timer.timing


def run_bare(cfg: DictConfig, datamodule, init_state: dict, device: torch.device, precision: str,
             n: int) -> Timing:
    """``n`` bare steps in a row."""
    t0 = time.perf_counter()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    bare = BareLoop(cfg, datamodule, init_state, device, precision)
    for _ in range(n):
        bare.step()
    bare.timing.wall = time.perf_counter() - t0
    return bare.timing


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {cpu_name()}, {os.cpu_count()} cores)"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu_name()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load avg {load}"


def ms(x: float) -> str:
    return f"{1e3 * x:.1f}"


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed", "16-mixed"], default=None,
                    help="Trainer precision and the bare loop's autocast (default: 32-true on cpu, "
                         "bf16-mixed on cuda as trainer=gpu)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per fit / loop")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each fit / loop (>= 1)")
    ap.add_argument("--rounds", type=int, default=2, help="runner/bare pairs, alternating in one process")
    ap.add_argument("--size", type=int, default=64, help="patch side (voxels)")
    ap.add_argument("--batch", type=int, default=2, help="patches per optimiser step")
    ap.add_argument("--samples-per-image", type=int, default=None,
                    help="patches drawn from each image (default: --batch, i.e. one image per step)")
    ap.add_argument("--model", default="unet", help="conf/model/<name>.yaml (unet = the paper's U-Net)")
    ap.add_argument("--dataset", default="demo3d")
    ap.add_argument("--lambda", dest="lam", type=float, default=2.0)
    ap.add_argument("--sampling", default="exact", choices=["exact", "subsample"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--variants", default="runner",
                    help=f"comma-separated runner rows, of {list(VARIANTS)}; the first is compared with the target")
    ap.add_argument("--cache-dir", default=os.environ.get("UASEG_CACHE", str(ROOT / ".cache")),
                    help="generated demo data (default: $UASEG_CACHE or <repo>/.cache)")
    ap.add_argument("--override", action="append", default=[],
                    help="extra Hydra override for both sides, e.g. dataset.image_size=32 (repeatable)")
    ap.add_argument("--interleave", choices=["step", "round"], default="step",
                    help="step: one bare step after every runner step, inside the same fit (robust to a "
                         "shared, bursty machine); round: whole runner fits and bare loops alternate")
    ap.add_argument("--prewarm", type=int, default=1,
                    help="untimed bare-loop steps before the first round: the process's first steps "
                         "(allocator, thread pool, kernel set-up) are slower, whichever side runs them")
    ap.add_argument("--rusage", action="store_true",
                    help="also report user / system CPU time and minor page faults per step (getrusage)")
    ap.add_argument("--verbose", action="store_true", help="keep Lightning's info logs and warnings")
    ap.add_argument("--losses", default=None,
                    help="comma-separated conf/loss presets, e.g. baseline,uncertainty_aware,one_pass,multiclass: "
                         "time a bare training step per loss instead (scripts/bench_train_losses.py; the first "
                         "is the ratios' reference)")
    ap.add_argument("--head-repeats", type=int, default=5, help="--losses: repeats of the loss head alone")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="--losses: print this many operators of a torch.profiler table of each loss head")
    args = ap.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        ap.error("--warmup, --steps and --rounds must be >= 1 (a step is timed from the previous step's end)")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device available")
    args.precision = args.precision or ("bf16-mixed" if args.device == "cuda" else "32-true")
    if args.precision == "16-mixed" and args.device != "cuda":
        ap.error("--precision 16-mixed needs --device cuda")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    if args.losses is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_train_losses

        try:
            bench_train_losses.parse_names(args.losses)
        except ValueError as err:
            ap.error(str(err))
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"lightning\..*")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"monai\..*")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("MPLBACKEND", "Agg")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as uaseg.train does on CUDA
    if args.losses is not None:
        return bench_train_losses.run(args)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        cfgs = {v: compose_cfg(args, Path(tmp) / v, Path(args.cache_dir), VARIANTS[v]) for v in variants}
        cfg = cfgs[variants[0]]
        if device.type == "cuda":  # trainer=gpu's cudnn autotuning, for the bare loop too
            torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark") or False)
        datamodule = build_datamodule(cfg.dataset)  # one datamodule, shared by every fit and loop
        datamodule.prepare_data()
        datamodule.setup("fit")
        L.seed_everything(int(cfg.seed), verbose=False)
        init_state = copy.deepcopy(build_module(cfg).state_dict())
        n_params = sum(v.numel() for k, v in init_state.items() if k.startswith("net."))
        steps_per_epoch = len(datamodule.train_dataloader())

        timings: dict[str, list[Timing]] = {v: [] for v in [*variants, "bare"]}
        paired: dict[str, list[Timing]] = {v: [] for v in variants}  # bare steps measured alongside
        n = args.warmup + args.steps
        t_start = time.perf_counter()
        if args.prewarm:
            run_bare(cfg, datamodule, init_state, device, args.precision, n=args.prewarm)
        for r in range(args.rounds):
            if args.interleave == "step":
                order = variants
            else:
                order = [*variants, "bare"] if r % 2 == 0 else ["bare", *variants]
            for what in order:
                if what == "bare":
                    timings[what].append(run_bare(cfg, datamodule, init_state, device, args.precision, n))
                    for v in variants:
                        paired[v].append(timings[what][-1])
                else:
                    round_cfg = copy.deepcopy(cfgs[what])
                    with open_dict(round_cfg):
                        round_cfg.paths.output_dir = str(Path(tmp) / f"{what}-round{r}")
                    bare = None
                    if args.interleave == "step":
                        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
                        bare = BareLoop(cfg, datamodule, init_state, device, args.precision)
                    timings[what].append(run_runner(round_cfg, datamodule, init_state, device, bare))
                    if bare is not None:
                        timings["bare"].append(bare.timing)
                        paired[what].append(bare.timing)
                        print(f"round {r + 1}/{args.rounds} bare: median step "
                              f"{ms(statistics.median(bare.timing.steps(args.warmup)))} ms", file=sys.stderr)
                print(f"round {r + 1}/{args.rounds} {what}: median step "
                      f"{ms(statistics.median(timings[what][-1].steps(args.warmup)))} ms", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t_start

    w = args.warmup

    def pooled(ts: list[Timing], fn) -> list:
        return [x for t in ts for x in fn(t)]

    rows = {}
    for what, ts in timings.items():
        steps = pooled(ts, lambda t: t.steps(w))
        rows[what] = {
            "median": statistics.median(steps), "mean": statistics.mean(steps), "n": len(steps),
            "compute": statistics.median(pooled(ts, lambda t: t.compute(w))),
            "between": statistics.median(pooled(ts, lambda t: [a - b for a, b in zip(t.steps(w), t.compute(w))])),
            "wall": statistics.median(t.wall for t in ts) if args.interleave == "round" else None,
            "usage": [statistics.median(u[i] for u in pooled(ts, lambda t: t.usage_steps(w))) for i in range(3)],
        }
        if what in paired:
            bare_steps = pooled(paired[what], lambda t: t.steps(w))
            rows[what]["ratio"] = rows[what]["median"] / statistics.median(bare_steps)
            rows[what]["ratio_mean"] = rows[what]["mean"] / statistics.mean(bare_steps)
            rows[what]["per_round"] = [statistics.median(a.steps(w)) / statistics.median(b.steps(w))
                                       for a, b in zip(ts, paired[what] if args.interleave == "step"
                                                       else timings["bare"])]
            if args.interleave == "step":  # step k of the runner against the bare step right after it
                rows[what]["per_step"] = statistics.median(a / b for a, b in zip(steps, bare_steps))
                rows[what]["extra"] = statistics.median(a - b for a, b in zip(steps, bare_steps))
    bare = rows["bare"]

    spatial = "x".join([str(args.size)] * len(cfg.dataset.patch_size))
    print()
    print(f"bench_train: {args.dataset}, {args.batch} x {spatial} patches per step "
          f"({cfg.dataset.samples_per_image} per image), model={args.model} ({n_params / 1e6:.2f} M parameters), "
          f"loss lambda={cfg.loss['lambda']:g} sampling={cfg.loss.sampling}, optimizer "
          f"{cfg.model.optimizer._target_.rsplit('.', 1)[-1]}, precision {args.precision}")
    print(f"machine: {args.device}: {machine(device)}")
    print(f"software: python {platform.python_version()}, torch {torch.__version__}, lightning {L.__version__}, "
          f"uaseg from {Path(sys.modules['uaseg'].__file__).parent}")
    how = ("each runner step followed by one bare step" if args.interleave == "step"
           else "runner and bare fits alternating")
    print(f"timing: {args.rounds} round(s) x ({args.warmup} warm-up + {args.steps} timed steps) per row, "
          f"{how}, in one process ({elapsed:.0f} s); {steps_per_epoch} steps per epoch; "
          f"step = end of the previous step to end of this one (data loading included)"
          + (f"; {args.prewarm} untimed bare step(s) first" if args.prewarm else ""))
    if args.rusage:
        print("per-step medians of getrusage: CPU seconds of all threads, minor page faults")
    print()
    hdr = ("what", "steps", "step median (ms)", "step mean (ms)", "ratio to bare", "extra per step (ms)",
           "compute median (ms)", "between median (ms)", "wall per fit (s)")
    if args.rusage:
        hdr += ("user CPU (s)", "sys CPU (s)", "minor faults")
    table = []
    for what, r in rows.items():
        label = "bare PyTorch loop" if what == "bare" else (
            "runner (Lightning Trainer)" if what == "runner" else f"runner, {what}")
        table.append((label, str(r["n"]), ms(r["median"]), ms(r["mean"]),
                      "1.000x" if what == "bare" else f"{r['ratio']:.3f}x",
                      ms(r["extra"]) if "extra" in r else "-",
                      ms(r["compute"]), ms(r["between"]), "-" if r["wall"] is None else f"{r['wall']:.1f}")
                     + ((f"{r['usage'][0]:.2f}", f"{r['usage'][1]:.2f}", f"{r['usage'][2]:.0f}") if args.rusage else ()))
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(hdr)]
    print(" | ".join(h.ljust(wd) for h, wd in zip(hdr, widths)))
    print("-+-".join("-" * wd for wd in widths))
    for t in table:
        print(" | ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(t, widths))))
    print()
    head = rows[variants[0]]
    print(f"{variants[0]}/bare: ratio of medians {head['ratio']:.3f}, of means {head['ratio_mean']:.3f}"
          + (f", median of per-step ratios {head['per_step']:.3f}" if "per_step" in head else "")
          + "; per round " + ", ".join(f"{x:.3f}" for x in head["per_round"]))
    print(f"target: {variants[0]} <= {TARGET:.2f}x bare loop (ratio of medians): "
          f"{'MET' if head['ratio'] <= TARGET else 'NOT MET'} ({head['ratio']:.3f}x)")
    return {"ratio": head["ratio"], "ratio_mean": head["ratio_mean"],
            **{f"{what}_median_s": r["median"] for what, r in rows.items()}}


if __name__ == "__main__":
    main()
