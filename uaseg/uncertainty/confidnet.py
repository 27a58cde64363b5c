"""ConfidNet (Corbière et al., NeurIPS 2019): a learned confidence head, the one-pass rival that the
failure-detection literature measures first.

A small conv head reads the frozen segmenter's penultimate features (the input of ``layer``, for
MONAI's DynUNet its 1x1 ``output_block``) and regresses the true-class probability
``p_true = softmax(z)[label]`` with a mean squared error on the training split; the test-time score
is ``tcp`` = 1 - predicted p_true (in [0, 1]). It is fitted as a second stage after the segmenter
(``confidence_head=tcp``; the paper's later fine-tuning of the encoder is left out), so it works with
any loss, λ = 0 included, and never changes the segmentation.

At inference :class:`WithConfidence` runs the network and the head as one network with K + 1 output
channels (logits, then predicted p_true), so the sliding-window inferer stitches the head's output
exactly as it stitches the logits. The head is stored in the checkpoint as plain tensors and numbers
(:data:`HEAD_KEY`), so ``weights_only`` loading keeps working.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from uaseg.errors import ConfigError

log = logging.getLogger(__name__)

#: checkpoint key of the head (a plain dict: :meth:`ConfidenceHead.to_record`)
HEAD_KEY = "uaseg_confidence_head"


class ConfidenceHead(nn.Module):
    """Features ``(B, C, *spatial)`` -> predicted true-class probability ``(B, 1, *spatial)`` in (0, 1):
    two 3x3 conv + ReLU layers and a 1x1 conv with a sigmoid (ConfidNet's segmentation head, shortened)."""

    def __init__(self, spatial_dims: int, in_channels: int, hidden: int = 32, layer: str = "output_block") -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"confidence_head: spatial_dims={spatial_dims}; the head is 2-D or 3-D")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims, self.in_channels, self.hidden, self.layer = spatial_dims, in_channels, hidden, layer
        self.body = nn.Sequential(conv(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                                  conv(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True), conv(hidden, 1, 1))

    def forward(self, features: Tensor) -> Tensor:
        return torch.sigmoid(self.body(features))

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def to_record(self, **info) -> dict:
        """The head as plain values for a checkpoint (``weights_only`` loading)."""
        return {"spatial_dims": self.spatial_dims, "in_channels": self.in_channels, "hidden": self.hidden,
                "layer": self.layer, "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                **info}

    @classmethod
    def from_record(cls, record: dict) -> "ConfidenceHead":
        """The head stored by :meth:`to_record`, checked first (it is read from a file): a
        ``ValueError`` saying what is wrong, before a layer is built from the stored sizes."""
        try:
            dims, c, h, layer, state = (record[k] for k in ("spatial_dims", "in_channels", "hidden", "layer", "state_dict"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a confidence-head record ({type(e).__name__}: {e})") from None
        if dims not in (2, 3) or not all(type(v) is int and v > 0 for v in (c, h)) or not isinstance(layer, str):
            raise ValueError(f"spatial_dims={dims!r}, in_channels={c!r}, hidden={h!r}, layer={layer!r}: not a 2-D or "
                             "3-D head with positive integer sizes")
        k3, k1 = (3,) * dims, (1,) * dims
        want = {"body.0.weight": (h, c, *k3), "body.0.bias": (h,), "body.2.weight": (h, h, *k3), "body.2.bias": (h,),
                "body.4.weight": (1, h, *k1), "body.4.bias": (1,)}
        if not isinstance(state, dict) or {k: tuple(getattr(v, "shape", ())) for k, v in state.items()} != want:
            raise ValueError(f"its weights are not those of a head with in_channels={c}, hidden={h}")
        if not all(torch.is_tensor(v) and v.is_floating_point() and torch.isfinite(v).all() for v in state.values()):
            raise ValueError("its weights are not all finite floating-point tensors")
        head = cls(dims, c, h, layer)
        head.load_state_dict(state)
        return head.eval()


def feature_layer(net: nn.Module, layer: str) -> nn.Module:
    """The submodule whose input the head reads (one line naming the key when it does not exist)."""
    try:
        return net.get_submodule(layer)
    except AttributeError:
        raise ConfigError(f"confidence_head.layer={layer!r}: {type(net).__name__} has no such submodule "
                          "(its input is the features the head reads; DynUNet: output_block)") from None


def logits_and_features(net: nn.Module, layer: str, image: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass of ``net``: its logits and the input of ``layer`` (a forward pre-hook)."""
    seen: dict[str, Tensor] = {}
    handle = feature_layer(net, layer).register_forward_pre_hook(lambda _m, inp: seen.__setitem__("f", inp[0]))
    try:
        logits = net(image)
    finally:
        handle.remove()
    if "f" not in seen:
        raise ConfigError(f"confidence_head.layer={layer!r} is not run by the network's forward pass")
    return logits, seen["f"]


class WithConfidence(nn.Module):
    """The network and the head as one network for the inferer: K logit channels, then predicted p_true."""

    def __init__(self, net: nn.Module, head: ConfidenceHead) -> None:
        super().__init__()
        self.net, self.head = net, head

    def forward(self, image: Tensor) -> Tensor:
        logits, features = logits_and_features(self.net, self.head.layer, image)
        return torch.cat([logits, self.head(features).to(logits.dtype)], dim=1)


def _plain(x) -> Tensor:
    """A MONAI MetaTensor as a plain tensor (no metadata tracking through the head)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def true_class_probability(logits: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """``(p_true (B, 1, *spatial), valid mask)``: softmax(z) at the label; labels outside 0..K-1
    (ignored voxels) are masked out."""
    k = logits.shape[1]
    label = label.long()
    if label.ndim == logits.ndim - 1:
        label = label[:, None]
    valid = (label >= 0) & (label < k)
    p = logits.float().softmax(dim=1).gather(1, label.clamp(0, k - 1))
    return p, valid


@dataclass
class HeadSettings:
    epochs: int = 5
    lr: float = 1e-3
    hidden: int = 32
    layer: str = "output_block"

    @classmethod
    def from_config(cls, cfg) -> "HeadSettings | None":
        if cfg is None:
            return None
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"confidence_head: unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: cfg[k] for k in known if k in cfg})


def fit_confidence_head(net: nn.Module, batches, spatial_dims: int, settings: HeadSettings,
                        device: torch.device | str = "cpu", seed: int = 0) -> tuple[ConfidenceHead, dict]:
    """Train a head on the frozen ``net`` over ``batches`` (a re-iterable of training batches with
    ``image`` and ``label``) for ``settings.epochs`` epochs; returns the head and its cost."""
    device = torch.device(device)
    was_training = net.training
    net.eval().to(device)
    gen = torch.Generator().manual_seed(int(seed))
    head: ConfidenceHead | None = None
    opt = None
    steps, last, start = 0, float("nan"), time.perf_counter()
    try:
        for _ in range(int(settings.epochs)):
            for batch in batches:
                image = _plain(batch["image"]).to(device)
                label = _plain(batch["label"]).to(device)
                with torch.no_grad():
                    logits, features = logits_and_features(net, settings.layer, image)
                    target, valid = true_class_probability(logits, label)
                if head is None:  # the feature width is known after the first pass
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
                        head = ConfidenceHead(spatial_dims, features.shape[1], settings.hidden, settings.layer)
                    head.to(device).train()
                    opt = torch.optim.Adam(head.parameters(), lr=float(settings.lr))
                pred = head(features.detach().float())
                err = F.mse_loss(pred, target, reduction="none")[valid]
                loss = err.mean() if err.numel() else pred.sum() * 0.0
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                last = float(loss.detach())
    finally:
        net.train(was_training)
    if head is None:
        raise ConfigError("confidence_head: the training split gave no batch to fit the head on")
    seconds = time.perf_counter() - start
    log.info("confidence head (ConfidNet): %d parameters, %d steps in %.1f s, last MSE %.5f",
             head.num_parameters, steps, seconds, last)
    return head.eval(), {"parameters": head.num_parameters, "train_seconds": seconds, "epochs": int(settings.epochs),
                         "steps": steps, "final_mse": last}
