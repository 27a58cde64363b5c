#!/usr/bin/env python
"""Cost of the uncertainty-aware ranking term in a training step of the paper's 3D U-Net.

Rows: lambda = 0 (baseline), exact all-pairs term, the paper's 300 x 6600 subsample, and the
reference code's formulation (subsample 300 x 6600, then a Python loop that materialises every
sampled pair and a MarginRankingLoss-style mean), then the exact term's variants beyond the paper
(``uaseg/losses/variants.py``: pairing, hinge power, Dice weights, and the consistency term, whose
step includes the second view's forward pass without gradient, as ``SelectiveSegModule`` runs it), the
multi-class remedies (``uaseg/losses/dynamics.py``: steer, balance) and a logging step, which also
measures the gradient ratio at the logits. Each row: median time of a full training step
(forward + loss + backward + Adam) as a ratio to the lambda = 0 step, and the median time of the
ranking term alone (forward + backward from fixed logits). Variants are interleaved in every
repeat (order rotated) after a warm-up round, so drift hits all rows alike.

    python scripts/bench_loss.py --batch 2 --size 64 --repeats 5 --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet

from uaseg.losses import CrossEntropy, UncertaintyAwareLoss, max_softmax_uncertainty
from uaseg.losses.variants import second_view_logits

LAMBDA, SCALE, MARGIN, NW, NC = 2.0, 1000.0, 0.1, 300, 6600


def random_subset(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if x.numel() <= n else x[torch.randperm(x.numel(), device=x.device)[:n]]


def reference_loop_term(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference formulation, re-stated: confidences p = max softmax; keep NW wrong / NC correct
    at random; then, one correct voxel at a time in a Python loop, pair it with every kept wrong
    voxel; concatenate all pairs and take mean(max(0, p_wrong - p_correct + m)) via
    F.margin_ranking_loss with target +1 (correct should be the more confident)."""
    conf, pred = torch.softmax(logits, 1).max(1)
    conf, pred, t = conf.reshape(-1), pred.reshape(-1), target.reshape(-1)
    ok = pred == t
    p_c, p_w = random_subset(conf[ok], NC), random_subset(conf[~ok], NW)
    if p_c.numel() == 0 or p_w.numel() == 0:
        return conf.sum() * 0
    firsts, seconds = [], []
    for i in range(p_c.numel()):
        firsts.append(p_c[i].expand(p_w.numel()))
        seconds.append(p_w)
    x1, x2 = torch.cat(firsts), torch.cat(seconds)
    return F.margin_ranking_loss(x1, x2, torch.ones_like(x1), margin=MARGIN)


class Measured(UncertaintyAwareLoss):
    """The exact term on a logging step: it also measures the gradient ratio at the logits."""

    def forward(self, *args, **kwargs):
        return super().forward(*args, measure=True, **kwargs)


class ReferenceLoss(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seg_loss = CrossEntropy()

    def forward(self, logits, target, epoch=None, view_logits=None):
        return self.seg_loss(logits, target) + LAMBDA * SCALE * reference_loop_term(logits, target[:, 0]), {}


def make_net(device):  # the brief's DynUNet; MONAI also requires upsample_kernel_size = strides[1:]
    return DynUNet(spatial_dims=3, in_channels=1, out_channels=8, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], upsample_kernel_size=[2, 2, 2],
                   filters=[32, 64, 128, 256], norm_name="instance",
                   act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}), res_block=False).to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--error-rate", type=float, default=0.1,
                    help="fraction of voxels whose label disagrees with the initial prediction")
    ap.add_argument("--ref-step-repeats", type=int, default=None,
                    help="cap on timed full steps of the reference-loop row (default: --repeats)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(args.seed)

    net = make_net(dev)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    x = torch.randn(args.batch, 1, *(args.size,) * 3, device=dev)
    with torch.no_grad():  # labels = initial prediction with a fraction flipped: a realistic |W|/|C| split
        y = net(x).argmax(1, keepdim=True)
    flip = torch.rand(y.shape, device=dev) < args.error_rate
    y = torch.where(flip, (y + torch.randint(1, 8, y.shape, device=dev)) % 8, y)

    variants = {
        "lambda=0 (baseline)": UncertaintyAwareLoss(lambda_=0.0),
        "exact (all pairs)": UncertaintyAwareLoss(lambda_=LAMBDA, scale=SCALE, margin=MARGIN, sampling="exact"),
        f"subsample {NW}x{NC}": UncertaintyAwareLoss(lambda_=LAMBDA, scale=SCALE, margin=MARGIN,
                                                     sampling="subsample", n_wrong=NW, n_correct=NC),
        f"reference loop {NW}x{NC}": ReferenceLoss(),
    }
    exact = dict(lambda_=LAMBDA, scale=SCALE, margin=MARGIN, sampling="exact")
    for key, value in [("pairing", "case"), ("pairing", "class"), ("hinge_power", 2), ("wrong_weight", "dice"),
                       ("consistency_view", "flip"), ("consistency_view", "noise")]:
        extra = {key: value, "consistency": 1.0} if key == "consistency_view" else {key: value}
        label = f"consistency=1 {value}" if key == "consistency_view" else f"{key}={value}"
        variants[f"exact, {label}"] = UncertaintyAwareLoss(**exact, **extra)
    # multi-class remedies (uaseg/losses/dynamics.py) and the cost of measuring the gradient ratio
    variants["exact, grad ratio measured"] = Measured(**exact)
    for label, extra in (("steer", {"steer": True}), ("balance", {"balance": True}),
                         ("steer, balance", {"steer": True, "balance": True})):
        variants[f"exact, {label}"] = UncertaintyAwareLoss(**exact, **extra)
    names = list(variants)
    ref_name = names[3]
    ref_cap = args.repeats if args.ref_step_repeats is None else args.ref_step_repeats

    def step(loss_fn):
        opt.zero_grad(set_to_none=True)
        needs_view = getattr(loss_fn, "needs_view", None)
        view = second_view_logits(net, x, loss_fn.consistency_view) if needs_view and needs_view(0) else None
        total, _ = loss_fn(net(x), y, epoch=0, view_logits=view)
        total.backward()
        opt.step()

    # ranking term alone, from fixed logits: u / masks / sampling / term, forward + backward
    with torch.no_grad():
        logits0 = net(x)
    zero_seg = lambda lg, t: lg.sum() * 0  # noqa: E731
    term_only = {
        names[1]: UncertaintyAwareLoss(zero_seg, lambda_=1.0, scale=1.0, margin=MARGIN, sampling="exact"),
        names[2]: UncertaintyAwareLoss(zero_seg, lambda_=1.0, scale=1.0, margin=MARGIN, sampling="subsample",
                                       n_wrong=NW, n_correct=NC),
        names[3]: lambda lg, t, epoch=None: (reference_loop_term(lg, t[:, 0]), {}),
    }

    def term(fn):
        lg = logits0.detach().requires_grad_(True)
        fn(lg, y, epoch=0)[0].backward()

    _, logs = variants[names[1]](logits0, y, epoch=0)
    n_vox = y.numel()
    print(f"device={dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'{torch.get_num_threads()} threads'})"
          f" torch={torch.__version__} batch={args.batch}x{args.size}^3 = {n_vox} voxels;"
          f" |W|={int(logs['n_wrong'])} |C|={int(logs['n_correct'])} at start")

    for n in names:  # warm-up round
        step(variants[n])
        if n in term_only:
            term(term_only[n])
    steps = {n: [] for n in names}
    terms = {n: [] for n in term_only}
    for r in range(args.repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            if n != ref_name or r < ref_cap:
                steps[n].append(timed(lambda: step(variants[n]), dev))
            if n in term_only:
                terms[n].append(timed(lambda: term(term_only[n]), dev))

    base = statistics.median(steps[names[0]])
    print(f"\nmedian of {args.repeats} interleaved repeats after 1 warm-up round"
          + (f" (reference-loop step: {ref_cap} repeats)" if ref_cap != args.repeats else ""))
    print(f"{'variant':<28}{'step [ms]':>12}{'vs lambda=0':>13}{'term fwd+bwd [ms]':>20}")
    for n in names:
        s = statistics.median(steps[n])
        tt = f"{1e3 * statistics.median(terms[n]):.1f}" if n in terms else "-"
        print(f"{n:<28}{1e3 * s:>12.1f}{s / base:>12.3f}x{tt:>20}")
    _, logs = variants[names[1]](net(x).detach(), y, epoch=0)
    print(f"\nranking term computed over all {int(logs['n_wrong'])} x {int(logs['n_correct'])} wrong x correct pairs"
          f" (exact) vs {NW} x {NC} (subsample / reference); u = {max_softmax_uncertainty.__name__}")


if __name__ == "__main__":
    main()
