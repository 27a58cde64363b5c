#!/usr/bin/env python
"""``bench_train.py --losses``: the cost of each loss preset in a full training step.

For every name in ``--losses`` (``conf/loss/<name>.yaml``: ``baseline`` = lambda 0,
``uncertainty_aware`` = the paper's objective, ``one_pass``, ``multiclass``) a bare PyTorch step
of the config's network (``model=unet``: the paper's 3D U-Net; ``dataset=demo3d``: 8 classes,
``--batch`` x ``--size``^3 patches) is timed: forward, loss, backward, optimizer step (the module's
own optimizer). Every arm starts from the same weights and trains on the same batches (fetched once
per step, outside the timed interval); the arms take turns step by step in one process (order rotated
each step), so a busy moment of a shared machine hits them alike. As in a Lightning run, every
``trainer.log_every_n_steps``-th step is a logging step (``measure=True``: the loss also measures the
gradient ratio at the logits). Printed: one line per loss, ``loss NAME median_step S ratio R`` (R: the
median over the baseline arm's median, which is the first name), then the loss head alone
(forward + backward from fixed logits, plain and on a logging step) and, with ``--profile``, the
operators it spends its time in.

    python scripts/bench_train.py --losses baseline,uncertainty_aware,one_pass,multiclass --steps 10
    python scripts/bench_train_losses.py --steps 10 --threads 1   # the same, these four presets
"""

from __future__ import annotations

import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train as bt  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402

DEFAULT = "baseline,uncertainty_aware,one_pass,multiclass"
TARGETS = {"uncertainty_aware": 1.10, "multiclass": 1.15}  # issue 28, on CPU


def known_losses() -> list[str]:
    return sorted(p.stem for p in (bt.ROOT / "conf" / "loss").glob("*.yaml"))


def parse_names(text: str) -> list[str]:
    """The comma-separated preset names, or ValueError naming the unknown ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known_losses()]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"--losses: {unknown or names} -- give distinct names of conf/loss/*.yaml: "
                         f"{known_losses()}")
    return names


class Arm:
    """One loss preset: its module's network (loaded with the shared weights), loss and optimizer."""

    def __init__(self, name: str, cfg, net_state: dict, device: torch.device, amp):
        module = bt.build_module(cfg)
        module.net.load_state_dict(net_state)
        self.name, self.device, self.amp = name, device, amp
        self.net, self.loss = module.net.to(device).train(), module.loss.to(device)
        opt = module.configure_optimizers()
        self.opt = opt["optimizer"] if isinstance(opt, dict) else opt
        self.steps: list[float] = []
        self.first_seg: float | None = None

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()

    @torch.enable_grad()
    def step(self, image, label, epoch: float, measure: bool) -> None:
        bt.sync(self.device)
        t0 = time.perf_counter()
        with self.autocast():
            logits = self.net(image)
            total, parts = self.loss(logits, label, epoch=epoch, measure=measure)
        self.opt.zero_grad()
        total.backward()
        self.opt.step()
        bt.sync(self.device)
        self.steps.append(time.perf_counter() - t0)
        if self.first_seg is None:
            self.first_seg = float(parts["seg"])

    def head(self, logits, label, epoch: float, measure: bool) -> float:
        """Seconds of the loss forward + backward from fixed logits."""
        x = logits.detach().clone().requires_grad_(True)
        bt.sync(self.device)
        t0 = time.perf_counter()
        with torch.enable_grad(), self.autocast():
            total, _ = self.loss(x, label, epoch=epoch, measure=measure)
        total.backward()
        bt.sync(self.device)
        return time.perf_counter() - t0


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def run(args) -> dict:
    """The ``--losses`` mode of ``bench_train.main`` (``args``: its parsed arguments)."""
    names = parse_names(args.losses)
    device = torch.device(args.device)
    amp = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(args.precision)
    if args.precision == "16-mixed":
        raise SystemExit("--losses: 16-mixed (a GradScaler per arm) is not supported; use bf16-mixed")
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="bench_losses_") as tmp:
        cfgs = {n: bt.compose_cfg(args, Path(tmp) / n, Path(args.cache_dir), loss=n) for n in names}
        cfg = cfgs[names[0]]
        if device.type == "cuda":  # trainer=gpu's cudnn autotuning
            torch.backends.cudnn.benchmark = bool(cfg.trainer.get("benchmark") or False)
        datamodule = bt.build_datamodule(cfg.dataset)
        datamodule.prepare_data()
        datamodule.setup("fit")
        L.seed_everything(int(cfg.seed), verbose=False)
        net_state = copy.deepcopy(bt.build_module(cfg).net.state_dict())
        arms = [Arm(n, cfgs[n], net_state, device, amp) for n in names]
        loader = datamodule.train_dataloader()
        per_epoch, log_every = len(loader), int(cfg.trainer.log_every_n_steps)
        batches = iter(loader)
        t_start = time.perf_counter()
        for k in range(args.warmup + args.steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            image = batch["image"].as_tensor().to(device)
            label = batch["label"].as_tensor().to(device)
            epoch, measure = k / per_epoch, (k + 1) % log_every == 0  # as SelectiveSegModule / Lightning
            for arm in rotated(arms, k):
                arm.step(image, label, epoch, measure)
        with torch.no_grad(), arms[0].autocast():
            logits = arms[0].net(image)
        heads = {(a.name, m): [] for a in arms for m in (False, True)}
        for r in range(args.head_repeats + 1):  # the first round warms up
            for arm in rotated(arms, r):
                for m in (False, True):
                    t = arm.head(logits, label, 1.0, m)
                    if r:
                        heads[arm.name, m].append(t)
        if args.profile:
            from torch.profiler import profile

            for arm in arms:
                with profile() as prof:
                    arm.head(logits, label, 1.0, False)
                print(f"\nprofile of the loss head, {arm.name} (forward + backward from fixed logits):")
                print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
        elapsed = time.perf_counter() - t_start
    return report(args, cfg, arms, heads, elapsed, load_before)


def report(args, cfg, arms: list[Arm], heads: dict, elapsed: float, load_before: str) -> dict:
    w = args.warmup
    med = {a.name: statistics.median(a.steps[w:]) for a in arms}
    head = {key: statistics.median(v) for key, v in heads.items()}
    base = arms[0].name
    spatial = "x".join([str(args.size)] * len(cfg.dataset.patch_size))
    print(f"\nbench_train --losses: {args.dataset}, {args.batch} x {spatial} patches per step, "
          f"{cfg.dataset.meta.num_classes} classes, model={args.model}, precision {args.precision}")
    print(f"machine: {args.device}: {bt.machine(torch.device(args.device))}; load avg before {load_before}, "
          f"after {load()}")
    print(f"timing: {args.warmup} warm-up + {args.steps} timed steps per loss, arms interleaved step by step "
          f"(order rotated), same initial weights and batches; every {cfg.trainer.log_every_n_steps}th step "
          f"measures the gradient ratio (a logging step); loss head: median of {args.head_repeats} "
          f"interleaved repeats ({elapsed:.0f} s in all)\n")
    hdr = ("loss", "step median (s)", "step mean (s)", "vs " + base, "head (ms)", "head, logging step (ms)",
           "head vs " + base)
    rows = [(a.name, f"{med[a.name]:.3f}", f"{statistics.mean(a.steps[w:]):.3f}",
             f"{med[a.name] / med[base]:.3f}x", f"{1e3 * head[a.name, False]:.1f}",
             f"{1e3 * head[a.name, True]:.1f}", f"{head[a.name, False] / head[base, False]:.2f}x") for a in arms]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    print(" | ".join(h.ljust(wd) for h, wd in zip(hdr, widths)))
    print("-+-".join("-" * wd for wd in widths))
    for r in rows:
        print(" | ".join(c.ljust(wd) if i == 0 else c.rjust(wd) for i, (c, wd) in enumerate(zip(r, widths))))
    print()
    for a in arms:
        print(f"loss {a.name} median_step {med[a.name]:.4f} ratio {med[a.name] / med[base]:.3f}")
    for name, target in TARGETS.items():
        if name in med and base == "baseline":
            ratio = med[name] / med[base]
            print(f"target: {name} <= {target:.2f}x baseline: {'MET' if ratio <= target else 'NOT MET'} "
                  f"({ratio:.3f}x)")
    return {"losses": {a.name: {"median_step": med[a.name], "ratio": med[a.name] / med[base],
                                "head": head[a.name, False], "head_logging": head[a.name, True],
                                "first_seg": a.first_seg} for a in arms}}


if __name__ == "__main__":  # bench_train.py --losses with the four presets by default
    argv = sys.argv[1:]
    bt.main(argv if "--losses" in argv else ["--losses", DEFAULT, *argv])
