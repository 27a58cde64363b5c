"""Time and peak memory of the exact Dice risk-coverage evaluation vs. a naive one.

Synthetic test set: ``--cases`` cases of equal size, 4 classes, ~90% voxel accuracy,
float32 uncertainty correlated with errors.  Ours = SelectiveAccumulator (exact and,
with ``--bits``, quantised); naive = straightforward numpy: at each of ``--naive-points``
thresholds, refer u > t and recompute every case's Dice from scratch (far fewer points
than the exact curve, yet O(points x n)), skipped when its estimated time exceeds
``--naive-limit`` seconds.  Peak memory is tracemalloc's peak of numpy allocations
during the evaluation, on top of the generated data (which is not counted).
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from uaseg.selective import SelectiveAccumulator


def make_cases(n_total, n_cases, k=4, seed=0):
    rng = np.random.default_rng(seed)
    per = n_total // n_cases
    for i in range(n_cases):
        y = rng.integers(0, k, per, dtype=np.int64).astype(np.uint8)
        wrong = rng.random(per, dtype=np.float32) < 0.1
        p = np.where(wrong, (y + rng.integers(1, k, per).astype(np.uint8)) % k, y).astype(np.uint8)
        u = rng.random(per, dtype=np.float32) * 0.6 + wrong * np.float32(0.35)
        yield u, p, y


def naive_curve(cases, k, points):
    allu = np.concatenate([u for u, _, _ in cases])
    thr = np.quantile(allu, np.linspace(1, 0, points))
    risks = []
    for t in thr:
        dices = []
        for u, p, y in cases:
            q = np.where(u > t, y, p)
            ds = []
            for c in range(1, k):
                a, b = q == c, y == c
                s = a.sum() + b.sum()
                if s:
                    ds.append(2 * np.sum(a & b) / s)
            dices.append(np.mean(ds) if ds else 1.0)
        risks.append(1 - np.mean(dices))
    cov = np.array([np.mean(allu <= t) for t in thr])
    return cov, np.array(risks)


def measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, dt, peak


def run_ours(cases, k, bits):
    acc = SelectiveAccumulator(k, quantize_bits=bits, bootstrap=200)
    for i, (u, p, y) in enumerate(cases):
        acc.add_case(u, p, y, f"case{i}")
    return acc.compute()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e6, 1e7, 1e8])
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--bits", type=int, default=16, help="quantised run (0: skip)")
    ap.add_argument("--naive-points", type=int, default=100)
    ap.add_argument("--naive-limit", type=float, default=120.0)
    ap.add_argument("--skip-exact-above", type=float, default=float("inf"))
    a = ap.parse_args()
    k = 4
    rows = []
    naive_rate = None   # seconds per (voxel x point), from the smallest size run
    for size in a.sizes:
        n = int(size)
        cases = list(make_cases(n, a.cases, k))
        res_ex = dt_ex = pk_ex = None
        if n <= a.skip_exact_above:
            res_ex, dt_ex, pk_ex = measure(lambda: run_ours(cases, k, None))
        res_q = dt_q = pk_q = None
        if a.bits:
            res_q, dt_q, pk_q = measure(lambda: run_ours(cases, k, a.bits))
        est = naive_rate * n * a.naive_points if naive_rate else 0.0
        if est <= a.naive_limit:
            _, dt_nv, pk_nv = measure(lambda: naive_curve(cases, k, a.naive_points))
            naive_rate = dt_nv / (n * a.naive_points)
            nv = f"{dt_nv:8.1f}s {pk_nv / 2**20:8.0f}MiB"
        else:
            dt_nv = pk_nv = None
            nv = f"skipped (est. {est:.0f}s > {a.naive_limit:.0f}s)"
        def fmt(dt, pk):
            return f"{dt:8.1f}s {pk / 2**20:8.0f}MiB" if dt is not None else "   (skipped)    "
        ratio = (f"{dt_nv / dt_ex:6.2f}x / {pk_nv / pk_ex:5.2f}x" if dt_nv and dt_ex else "n/a")
        npts = len(res_ex.curve.coverage) if res_ex else None
        aurc = (f"{res_ex.aurc_dice:.4f}" if res_ex else "-") + \
               (f" / {res_q.aurc_dice:.4f}" if res_q else "")
        rows.append((f"{n:.0e}", fmt(dt_ex, pk_ex), fmt(dt_q, pk_q), nv, ratio, str(npts), aurc))
        del cases
    hdr = ("voxels", "ours exact (time, peak)", f"ours {a.bits}-bit (time, peak)",
           f"naive {a.naive_points}-pt (time, peak)", "naive/exact time/mem",
           "exact curve pts", "AURC% exact / quant")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    print(" | ".join(h.ljust(w) for h, w in zip(hdr, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"({a.cases} synthetic cases, {k} classes, ~10% wrong voxels; peak = tracemalloc "
          "peak during evaluation; the naive curve has only "
          f"{a.naive_points} points, the exact one every distinct threshold)")


if __name__ == "__main__":
    main()
