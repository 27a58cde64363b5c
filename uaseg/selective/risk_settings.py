"""The ``eval.risk_control`` settings (also ``uaseg calibrate``'s options), checked as a whole before
any work: the config check runs :meth:`RiskControlSettings.from_config` before a run folder is made,
the runner again with the data (:meth:`RiskControlSettings.check_size`), ``uaseg calibrate`` on its
options. Kept free of the inference code so the config check can use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from uaseg.errors import ConfigError
from uaseg.selective.case_losses import unit_numbers
from uaseg.selective.risk_control import METHODS, PVALUES, min_calibration_cases
from uaseg.selective.risk_kinds import KIND_HELP, n_components, parse_kind


def _as_tuple(x: Any) -> tuple:
    if x is None:
        return ()
    if isinstance(x, (list, tuple)) or type(x).__name__ == "ListConfig":
        return tuple(x)
    return (x,)


UNITS = ("patient", "case")


@dataclass(frozen=True)
class RiskControlSettings:
    """The ``eval.risk_control`` group: ``alpha`` (one or a list), ``method`` (``crc``, ``ltt`` or
    both), ``delta`` and ``pvalue`` (``ltt``: hb | wsr | binom), ``risk`` (the kinds to control, one or a
    list: dice | structure | tail@b | fnr) and ``unit`` (patient: a dataset's patients when it names
    them, else its cases; case: always cases)."""

    alphas: tuple[float, ...]
    methods: tuple[str, ...]
    delta: float
    kinds: tuple[str, ...] = ("dice",)
    pvalue: str = "hb"
    unit: str = "patient"

    @classmethod
    def from_config(cls, cfg: Any, where: str = "eval.risk_control") -> "RiskControlSettings | None":
        """None when ``alpha`` is null (risk control off); a :class:`ConfigError` for bad values."""
        if not cfg or cfg.get("alpha") is None:
            return None
        try:
            alphas = tuple(float(a) for a in _as_tuple(cfg.get("alpha")))
            methods = tuple(str(m) for m in _as_tuple(cfg.get("method", "crc")))
            delta = float(cfg.get("delta", 0.1))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: alpha and delta must be numbers ({e})") from e
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ConfigError(f"{where}.method={list(methods)}: choose from {list(METHODS)}")
        if not alphas or any(not 0 < a < 1 for a in alphas):
            raise ConfigError(f"{where}.alpha={list(alphas)}: each alpha must be in (0, 1)")
        if not 0 < delta < 1:
            raise ConfigError(f"{where}.delta={delta}: must be in (0, 1)")
        try:
            kinds = tuple(parse_kind(k).key for k in _as_tuple(cfg.get("risk", "dice")))
        except ValueError as e:
            raise ConfigError(f"{where}.risk: {e}") from None
        if not kinds:
            raise ConfigError(f"{where}.risk: give at least one of {KIND_HELP}")
        for key, values in (("alpha", alphas), ("method", methods), ("risk", kinds)):
            twice = sorted({f"{v:g}" if isinstance(v, float) else v for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"{where}.{key}={_show(values)}: {', '.join(twice)} is listed more than once; "
                                  "give each value once")
        pvalue = str(cfg.get("pvalue", "hb"))
        if pvalue not in PVALUES:
            raise ConfigError(f"{where}.pvalue={pvalue}: choose from {list(PVALUES)}")
        other = [k for k in kinds if not parse_kind(k).binary]
        if pvalue == "binom" and "ltt" in methods and other:
            raise ConfigError(f"{where}.pvalue=binom is valid only for 0/1 losses: every risk must be tail@<beta>, "
                              f"not {', '.join(other)} (use hb or wsr for those, or calibrate them in another run)")
        unit = str(cfg.get("unit", "patient"))
        if unit not in UNITS:
            raise ConfigError(f"{where}.unit={unit}: choose from {list(UNITS)}")
        return cls(alphas, methods, delta, kinds, pvalue, unit)

    def pairs(self) -> list[tuple[str, float]]:
        return [(m, a) for m in self.methods for a in self.alphas]

    def triples(self) -> list[tuple[str, str, float]]:
        """(risk kind, method, alpha) of every calibration asked for."""
        return [(k, m, a) for k in self.kinds for m in self.methods for a in self.alphas]

    def check_size(self, n: int, num_classes: int = 2, what: str = "validation cases") -> None:
        """A clear error when ``n`` calibration units cannot certify every requested (kind, method, alpha)."""
        if n == 0:
            raise ConfigError("eval.risk_control: the validation split is empty; risk control calibrates on it")
        short = []
        for kind, m, a in self.triples():
            comps = n_components(parse_kind(kind), num_classes)
            k = min_calibration_cases(a, m, self.delta, self.pvalue if m == "ltt" else "hb", comps)
            if n < k:
                short.append(("" if kind == "dice" else f"{kind} ") + f"{m} alpha={a:g}" + (f" delta={self.delta:g}" if m == "ltt" else "")
                             + (f" ({comps} structures, Bonferroni)" if comps > 1 and m == "ltt" else "") + f" needs >= {k}")
        if short:
            raise ConfigError(
                f"eval.risk_control: {n} {what} are too few ({'; '.join(short)}); use more validation cases "
                "(dataset.val_fraction, more data) or a larger alpha (and delta)")

    def units(self, datamodule) -> dict | None:
        """Case id -> patient id of the validation cases (None: each case its own unit)."""
        if self.unit != "patient" or not hasattr(datamodule, "case_units"):
            return None
        return datamodule.case_units("val")


def _show(values: tuple) -> str:
    return "[" + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"


def count_units(case_ids: list, units: dict | None) -> int:
    """Calibration units among these cases (patients, a case its patient map does not name counting alone)."""
    return len(unit_numbers([str(c) for c in case_ids], units)[1])
