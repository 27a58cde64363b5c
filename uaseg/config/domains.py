"""The kinds of allowed values a config key can have (:data:`uaseg.config.check.DOMAINS`): each
says whether a value is allowed (``allows``) and what is (``describe``, for the one-line error)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


@dataclass(frozen=True)
class Number:
    """A finite number (or integer) in a range; ``null`` allows ``None``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    null: bool = False
    note: str = ""

    def describe(self) -> str:
        text = "an integer" if self.integer else "a number"
        lo, hi = self.low, self.high
        if lo is not None and hi is not None:
            text += f" in {'(' if self.low_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if self.high_open else ']'}"
        elif lo is not None:
            text += f" {'>' if self.low_open else '>='} {_fmt(lo)}"
        elif hi is not None:
            text += f" {'<' if self.high_open else '<='} {_fmt(hi)}"
        text = ("null or " if self.null else "") + text
        return text + (f" ({self.note})" if self.note else "")

    def allows(self, v: Any) -> bool:
        if v is None:
            return self.null
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.integer and not float(v).is_integer():
            return False
        lo, hi = self.low, self.high
        if lo is not None and (v <= lo if self.low_open else v < lo):
            return False
        return not (hi is not None and (v >= hi if self.high_open else v > hi))


@dataclass(frozen=True)
class Numbers:
    """A list of numbers, each in ``each``'s domain; ``length`` entries if given; ``scalar``: a single
    number is accepted too (e.g. an isotropic spacing)."""

    each: Number
    length: int | None = None
    scalar: bool = False
    null: bool = False
    note: str = ""

    def describe(self) -> str:
        what = (f"a list of {self.length} entries, each" if self.length else "a list, each entry") + " " + self.each.describe()
        if self.scalar:
            what = f"{self.each.describe()} or {what}"
        return ("null or " if self.null else "") + what + (f" ({self.note})" if self.note else "")

    def allows(self, v: Any) -> bool:
        if v is None:
            return self.null
        if not isinstance(v, (list, tuple)):
            return self.scalar and self.each.allows(v)
        return (self.length is None or len(v) == self.length) and len(v) > 0 and all(self.each.allows(x) for x in v)


@dataclass(frozen=True)
class Batches:
    """Lightning's ``limit_*_batches``: null (all), a count >= 1, or a fraction in (0, 1]."""

    def describe(self) -> str:
        return "null (all batches), an integer >= 1 (batches) or a fraction in (0, 1]"

    def allows(self, v: Any) -> bool:
        if v is None:
            return True
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return v >= 1 if isinstance(v, int) else 0 < v <= 1


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of values, or of a registry read when checked (``options`` callable)."""

    options: tuple | Callable[[], Iterable]
    null: bool = False

    def _opts(self) -> list:
        return list(self.options() if callable(self.options) else self.options)

    def describe(self) -> str:
        return ("null or " if self.null else "") + "one of " + ", ".join(str(o) for o in self._opts())

    def allows(self, v: Any) -> bool:
        return (v is None and self.null) or (v is not None and v in self._opts())


@dataclass(frozen=True)
class Flag:
    """``true`` or ``false`` (a typo such as ``flase`` is a string, and a string is truthy)."""

    def describe(self) -> str:
        return "true or false"

    def allows(self, v: Any) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Names:
    """A non-empty list of distinct names from a registry (``options`` read when checked)."""

    options: Callable[[], Iterable]

    def describe(self) -> str:
        return "a list of distinct names from " + ", ".join(str(o) for o in self.options())

    def allows(self, v: Any) -> bool:
        known = set(self.options())
        return isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v) and all(x in known for x in v)


@dataclass(frozen=True)
class RiskKinds:
    """Risk kinds of risk control (:mod:`uaseg.selective.risk_kinds`): one (``dice``, ``structure``,
    ``tail@0.15``, ``fnr``) or, with ``many``, a non-empty list of distinct ones."""

    many: bool = True
    null: bool = False

    def describe(self) -> str:
        from uaseg.selective.risk_kinds import KIND_HELP

        return ("null or " if self.null else "") + KIND_HELP + (", or a list of them" if self.many else "")

    def allows(self, v: Any) -> bool:
        from uaseg.selective.risk_kinds import parse_kind

        if v is None:
            return self.null
        items = list(v) if (self.many and isinstance(v, (list, tuple))) else [v]
        try:
            keys = [parse_kind(x).key for x in items if isinstance(x, str)]
        except ValueError:
            return False
        return len(keys) == len(items) > 0 and len(set(keys)) == len(keys)


def show(v: Any) -> str:
    """A value as it is written on the command line (``null``, ``true``, ``[1,2]``, ``'a'``)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(show(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)
