"""Group runs into arms and match every "ours" arm with its baseline.

The rule (also printed in every report):

* replicate keys ``fold`` and ``seed`` never split a group: they are what we average over;
* an **arm** is the runs sharing everything else: the *context* (every identity key that is not
  a loss key -- dataset, model, tag, and any key added to the identity later -- plus the
  run's Hydra overrides that change results but are not identity keys, e.g.
  ``trainer.max_epochs=10`` or ``loss/seg_loss=dice_ce``) and, for λ > 0, the ranking-loss
  settings (λ, margin, scale, sampling, n_wrong × n_correct, start_epoch);
* ``n_wrong``/``n_correct`` are ignored under ``sampling=exact`` (they are unused there);
* the **baseline** is λ = 0.  λ = 0 switches the ranking term off, so a baseline's loss keys are
  irrelevant: one baseline arm per context, matched to every ours arm of that context.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from uaseg.config.identity import LOSS_KEYS, REPLICATE_KEYS

from .collect import Run

#: Hydra overrides that do not change a run's numbers, or are already identity keys
IGNORED_OVERRIDES = {"dataset", "model", "tag", "seed", "loss", "ckpt_path", "train", "test",
                     "dataset.fold", "dataset.num_workers", "trainer.devices",
                     "trainer.accelerator", "trainer.strategy", "trainer.num_nodes",
                     "eval.figures", "eval.bootstrap", "eval.save_arrays",
                     "eval.panel_coverage", "callbacks.progress_bar",
                     *(f"loss.{k}" for k in LOSS_KEYS)}
IGNORED_PREFIXES = ("hydra.", "paths.", "logger", "callbacks.progress_bar", "eval.risk_control", "eval.shift")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def result_overrides(run) -> tuple[str, ...]:
    """The run's overrides that can change its numbers and are not identity keys."""
    keep = [o for o in run.overrides
            if _key(o) not in IGNORED_OVERRIDES and not _key(o).startswith(IGNORED_PREFIXES)]
    return tuple(sorted(keep))


def is_baseline(run: Run) -> bool:
    lam = run.identity.get("lambda")
    return lam is not None and float(lam) == 0.0


def context_of(run: Run) -> tuple:
    """Identity minus loss and replicate keys, plus result-changing overrides."""
    ident = [(k, v) for k, v in run.identity.items() if k not in LOSS_KEYS + REPLICATE_KEYS]
    extra = result_overrides(run)
    return tuple(ident) + ((("overrides", extra),) if extra else ())


def loss_of(run: Run) -> tuple:
    """The ranking-loss settings of an ours run (n_wrong/n_correct dropped under exact)."""
    s = run.identity
    out = []
    for k in LOSS_KEYS:
        v = s.get(k)
        if k in ("n_wrong", "n_correct") and s.get("sampling") == "exact":
            v = None
        if k == "consistency_view" and not s.get("consistency"):
            v = None
        if k == "balance" and v is None:  # runs from before issue 27: null was "off"
            v = False
        if k == "score_temperature" and v is None:  # runs from before the key: the plain score
            v = 1.0
        if k == "scale" and s.get("balance") is True:  # no effect under balance (lambda is the ratio)
            v = None
        out.append((k, v))
    return tuple(out)


#: the paper's choices for the loss variants: a run that departs from one names it in its setting
PAPER_OBJECTIVE = {"score": "max_softmax", "score_temperature": 1.0, "pairing": "batch", "hinge_power": 1, "wrong_weight": "uniform",
                   "consistency": 0.0, "warmup_epochs": 0, "balance": False, "steer": False}


@dataclass
class Arm:
    """Runs of one setting; ``by_fold`` groups them by fold (several seeds are averaged)."""

    context: tuple
    loss: tuple
    runs: list[Run] = field(default_factory=list)

    def by_fold(self) -> "OrderedDict":
        out: OrderedDict = OrderedDict()
        for r in sorted(self.runs, key=lambda r: (str(r.fold), str(r.path))):
            out.setdefault(r.fold, []).append(r)
        return out

    @property
    def n_folds(self) -> int:
        return len(self.by_fold())


@dataclass
class Comparison:
    """An ours arm and its baseline arm (either may be None)."""

    context: tuple
    ours: Arm | None
    base: Arm | None

    @property
    def loss(self) -> tuple:
        return self.ours.loss if self.ours else ()


def _fmt(v) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) >= 1 else f"{v:g}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_context(context: tuple) -> str:
    parts = []
    for k, v in context:
        if k == "overrides":
            parts.append(" ".join(v))
        elif v is not None:
            parts.append(f"{k}={_fmt(v)}")
    return ", ".join(parts)


def describe_loss(loss: tuple) -> str:
    d = dict(loss)
    if not d:
        return "baseline only"
    s = [f"λ={_fmt(d['lambda'])}", f"margin={_fmt(d['margin'])}"]
    s += [f"scale={_fmt(d['scale'])}"] if d.get("scale") is not None else []
    s.append(f"sampling={d['sampling']}")
    if d.get("n_wrong") is not None:
        s.append(f"sample={d['n_wrong']}×{d['n_correct']}")
    if d.get("start_epoch"):
        s.append(f"start_epoch={d['start_epoch']}")
    s += [f"{k}={_fmt(d[k])}" for k, paper in PAPER_OBJECTIVE.items() if d.get(k) not in (None, paper)]
    if d.get("consistency"):
        s.append(f"view={d.get('consistency_view')}")
    return ", ".join(s)


def compare(runs: list[Run]) -> list[Comparison]:
    """One Comparison per ours arm (with its context's baseline, or None), plus one per context
    that has only a baseline; ordered by context, then λ and the other loss keys."""
    bases: OrderedDict = OrderedDict()
    ours: OrderedDict = OrderedDict()
    for r in runs:
        ctx = context_of(r)
        if is_baseline(r):
            bases.setdefault(ctx, Arm(ctx, ())).runs.append(r)
        else:
            key = (ctx, loss_of(r))
            ours.setdefault(key, Arm(ctx, key[1])).runs.append(r)
    out = [Comparison(ctx, arm, bases.get(ctx)) for (ctx, _), arm in ours.items()]
    used = {c.context for c in out}
    out += [Comparison(ctx, None, arm) for ctx, arm in bases.items() if ctx not in used]
    return sorted(out, key=lambda c: (str(c.context), [_sortable(v) for _, v in c.loss]))


def _sortable(v):
    """Numbers before strings, numbers numerically (λ = 0.5 < 2 < 10)."""
    return (0, float(v), "") if isinstance(v, (int, float)) else (1, 0.0, str(v))


def _few(ids, n: int = 3) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "") if ids else "none"


def seed_groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Runs that differ only in ``seed`` (same context, loss setting and fold; single networks):
    the members of a deep ensemble. Each group is named by its setting and fold; members must have
    been tested on the same cases (else a clear error: the data split followed the training seed)."""
    from uaseg.errors import UserError

    groups: OrderedDict = OrderedDict()
    for r in runs:
        if r.identity.get("method", "single") != "single":
            continue
        loss = () if is_baseline(r) else loss_of(r)
        groups.setdefault((context_of(r), loss, r.fold), []).append(r)
    out = []
    for (ctx, loss, fold), members in groups.items():
        if len(members) < 2:
            continue
        cases = {r.path: sorted(c.case_id for c in r.result.cases or []) for r in members}
        first = members[0]
        for r in members[1:]:
            if cases[r.path] != cases[first.path]:
                a, b = set(cases[first.path]), set(cases[r.path])
                raise UserError(
                    f"ensemble members {first.path} and {r.path} were tested on different cases "
                    f"({len(a)} vs {len(b)}; only in the first: {_few(a - b)}, only in the second: {_few(b - a)}); "
                    "their data split must not depend on the seed"
                )
        label = f"{describe_context(ctx)}; {describe_loss(loss) if loss else 'λ=0'}; fold={fold}"
        out.append((label, sorted(members, key=lambda r: str(r.path))))
    return out
