"""Paired table of a seeds x folds study: every arm against the baseline arm, run by run.

``uaseg report`` averages each arm; this script pairs each run with the baseline run of the same seed
and fold (same data, same initialisation), which is what says whether a gain is beyond the seed spread:

    python scripts/paired_study.py outputs/study/mri250 outputs/study/mri250_more        # docs/multiclass_3d.md
    python scripts/paired_study.py outputs/study/screen --base base --scores max_softmax,margin

An arm is a multirun folder (``<root>/**/<arm>/<job>/summary.json``); arms of the same name under several
roots are merged. Columns (AURC and Dice in %): runs; AURC mean +- sd; Delta AURC, the ratio of the arm's
mean to the baseline's over the runs they share; paired Delta, mean +- sd of each run's own ratio; how many
runs are better; p, the one-sided Wilcoxon signed-rank test that the arm's AURC is lower; Dice at coverage 1
and its paired difference; and whether the arm meets a target (default issue 27's: Delta AURC <= -15 %,
Dice within 1 point, p < 0.05). One such column per score in ``--scores``; with several scores a second
table compares the baseline arm's scores with the first, run by run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np


def load(roots: list[str]) -> dict[str, dict[tuple, dict]]:
    """arm -> (seed, fold) -> summary (a second run of the same seed and fold in an arm is an error)."""
    arms: dict[str, dict[tuple, dict]] = {}
    where: dict[tuple, Path] = {}
    for root in roots:
        files = sorted(Path(root).rglob("summary.json"))
        if not files:
            sys.exit(f"paired_study: no summary.json under {root}")
        for f in files:
            try:
                s = json.loads(f.read_text())
                key = (s["seed"], s["fold"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                sys.exit(f"paired_study: {f}: not a run summary ({e})")
            arm = f.parent.parent.name
            if (arm, key) in where:
                sys.exit(f"paired_study: seed {key[0]} fold {key[1]} of arm {arm} twice: {where[arm, key]} and {f}")
            where[arm, key] = f
            arms.setdefault(arm, {})[key] = s
    return arms


def aurc(s: dict, score: str) -> float:
    return float(s["scores"][score]["aurc_dice"]) if score in s.get("scores", {}) else math.nan


def dice(s: dict) -> float:
    return 100.0 * float(s["dice_full"]["mean"])


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def compare(arm: dict, base: dict, score: str, target: float, dice_tol: float, alpha: float,
            base_score: str | None = None) -> dict:
    """The paired numbers of one arm against the baseline on one score (the baseline's on ``base_score``)."""
    from scipy.stats import wilcoxon

    base_score = base_score or score
    keys = sorted(k for k in arm if k in base and math.isfinite(aurc(arm[k], score))
                  and math.isfinite(aurc(base[k], base_score)))
    a = np.array([aurc(arm[k], score) for k in keys])
    b = np.array([aurc(base[k], base_score) for k in keys])
    dd = np.array([dice(arm[k]) - dice(base[k]) for k in keys])
    if len(keys) == 0:
        return {"n": 0}
    ratio = 100.0 * (a / b - 1.0)
    delta = 100.0 * (a.mean() / b.mean() - 1.0)
    p = float(wilcoxon(a, b, alternative="less").pvalue) if len(keys) > 1 and np.any(a != b) else math.nan
    meets = delta <= target and dd.mean() >= -dice_tol and p < alpha
    return {"n": len(keys), "delta": delta, "ratio": ratio, "better": int((a < b).sum()), "p": p, "dice": dd, "meets": meets}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", help="study folders (multirun folders of arms below them)")
    ap.add_argument("--base", default="base", help="the baseline arm's folder name (default: base)")
    ap.add_argument("--scores", default="max_softmax", help="comma-separated test scores (default: max_softmax)")
    ap.add_argument("--target", type=float, default=-15.0, help="Delta AURC (%%) to reach (default -15)")
    ap.add_argument("--dice-tol", type=float, default=1.0, help="Dice points the arm may lose (default 1)")
    ap.add_argument("--alpha", type=float, default=0.05, help="level of the one-sided Wilcoxon test (default 0.05)")
    args = ap.parse_args(argv)
    arms = load(args.roots)
    if args.base not in arms:
        sys.exit(f"paired_study: no arm named {args.base!r} (found {sorted(arms)}); pass --base")
    base = arms[args.base]
    scores = args.scores.split(",")
    head = ["arm", "runs", "Dice@1.00 (%)"]
    for sc in scores:
        head += [f"AURC {sc} (%)", "Δ AURC", "paired Δ", "runs better", "p", "Δ Dice (points)", "meets target"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    order = [args.base] + sorted(a for a in arms if a != args.base)
    for name in order:
        runs = arms[name]
        d = np.array([dice(s) for s in runs.values()])
        row = [name, str(len(runs)), f"{d.mean():.1f} ± {_sd(d):.1f}"]
        for sc in scores:
            a = np.array([aurc(s, sc) for s in runs.values()])
            a = a[np.isfinite(a)]
            row.append(f"{a.mean():.3f} ± {_sd(a):.3f}" if len(a) else "–")
            c = compare(runs, base, sc, args.target, args.dice_tol, args.alpha)
            if name == args.base or c["n"] == 0:
                row += ["reference" if name == args.base else "no pairs"] + [""] * 5
                continue
            row += [f"{c['delta']:+.1f} %", f"{c['ratio'].mean():+.1f} ± {_sd(c['ratio']):.1f} %",
                    f"{c['better']}/{c['n']}", f"{c['p']:.3f}", f"{c['dice'].mean():+.1f} ± {_sd(c['dice']):.1f}",
                    "yes" if c["meets"] else "no"]
        print("| " + " | ".join(row) + " |")
    if len(scores) > 1:  # the baseline's own scores, each against the first, run by run
        print()
        print(f"Arm {args.base}, each score against {scores[0]} in the same runs (the same prediction, only the order differs):")
        print()
        print("| score | AURC (%) | Δ AURC | paired Δ | runs better | p |")
        print("|---|---|---|---|---|---|")
        for sc in scores:
            a = np.array([aurc(s, sc) for s in base.values()])
            a = a[np.isfinite(a)]
            c = compare(base, base, sc, args.target, args.dice_tol, args.alpha, base_score=scores[0])
            if not len(a):
                print(f"| {sc} | – | not scored in these runs |  |  |  |")
                continue
            print(f"| {sc} | {a.mean():.3f} ± {_sd(a):.3f} | " + (" | ".join(["reference", "", "", ""])
                  if sc == scores[0] or c["n"] == 0 else f"{c['delta']:+.1f} % | {c['ratio'].mean():+.1f} ± "
                  f"{_sd(c['ratio']):.1f} % | {c['better']}/{c['n']} | {c['p']:.3f}") + " |")
    print()
    print(f"Per run (seed s, fold f): AURC {' / '.join(scores)} (%), Dice@1.00 (%)")
    for name in order:
        cells = [f"s{k[0]}f{k[1]} " + " / ".join(f"{aurc(s, sc):.2f}" for sc in scores) + f" / {dice(s):.1f}"
                 for k, s in sorted(arms[name].items())]
        print(f"* {name}: " + "; ".join(cells))


if __name__ == "__main__":
    main()
