"""Monte-Carlo dropout: passes with the dropout layers sampling, everything else (normalisation) in
inference mode."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from uaseg.errors import ConfigError

DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def dropout_layers(net: nn.Module) -> list[nn.Module]:
    """The network's dropout layers that actually drop (p > 0)."""
    return [m for m in net.modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0]


@contextmanager
def dropout_active(net: nn.Module) -> Iterator[None]:
    """Dropout layers in training mode for the duration, the rest as it was."""
    layers = dropout_layers(net)
    if not layers:
        raise ConfigError(
            "eval.scores asks for MC dropout, but the network has no dropout (model.dropout=0, the paper's "
            "network); train with e.g. model.dropout=0.1"
        )
    modes = [m.training for m in layers]
    try:
        for m in layers:
            m.train()
        yield
    finally:
        for m, mode in zip(layers, modes):
            m.train(mode)
