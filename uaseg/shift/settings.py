"""The ``eval.shift`` settings (conf/eval/default.yaml), checked as a whole before any work: the config
check runs :meth:`ShiftSettings.from_config` before a run folder is made (:mod:`uaseg.config.rules`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from uaseg.errors import ConfigError
from uaseg.selective.risk_bounds import METHODS, min_calibration_cases

from .corruptions import KINDS, RGB_ONLY, SEVERITY_LEVELS, check_kind

WHERE = "eval.shift"
#: what the case referral's alpha bounds: cases accepted and failing among all cases, or among the accepted
AMONG = ("all", "accepted")


def _as_list(x: Any, key: str) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)) or type(x).__name__ == "ListConfig":
        return list(x)
    if isinstance(x, (str, int)) and not isinstance(x, bool):
        return [x]
    raise ConfigError(f"{WHERE}.{key}={x!r}: expected a list")


def accepted_counts(n: int, alpha: float, delta: float) -> list[int]:
    """The accepted-case counts ``M`` tried (see uaseg/shift/referral.py), from ``n, alpha, delta`` only:
    the longest run ``n, 0.8 n, 0.64 n, ...`` (down to 2) whose every count could reject at
    ``delta / |M|`` even with no failure."""
    grid, m = [], n
    while m >= 2:
        grid.append(m)
        m = min(m - 1, int(m * 0.8))
    usable = [k for k in range(1, len(grid) + 1) if (1 - alpha) ** (grid[k - 1] - 1) <= delta / k]
    return grid[:usable[-1]] if usable else []


@dataclass(frozen=True)
class CaseReferralSettings:
    """Refer a whole case when its case score exceeds a threshold calibrated on the clean validation
    cases, so that the fraction of cases accepted *and* failing (``among="all"``) or the fraction of the
    *accepted* cases that fail (``among="accepted"``, LTT only) is at most ``alpha``."""

    alpha: float
    method: str = "crc"
    delta: float = 0.1
    among: str = "all"

    def min_cases(self) -> int:
        if self.among == "accepted":
            # the first count alone must reject with no failure: (1 - alpha)^(n - 1) <= delta
            n = max(2, 1 + math.ceil(math.log(self.delta) / math.log(1 - self.alpha) - 1e-9))
            while not accepted_counts(n, self.alpha, self.delta):
                n += 1
            return n
        return min_calibration_cases(self.alpha, self.method, self.delta if self.method == "ltt" else None,
                                     "binom" if self.method == "ltt" else "hb")


@dataclass(frozen=True)
class ShiftSettings:
    """``kinds`` x ``severities`` corruptions of the test split (seeded by ``seed``), a case failing
    below Dice ``fail_dice``, the case-level referral (None: off), per-condition recalibration
    (``recalibrate``: the corrupted validation cases stand in for a site's own calibration cases) and
    ``groups``: the report per natural test group even without corruptions."""

    kinds: tuple[str, ...]
    severities: tuple[int, ...]
    seed: int = 0
    fail_dice: float = 0.8
    case_referral: CaseReferralSettings | None = None
    recalibrate: bool = True
    groups: bool = False

    @property
    def conditions(self) -> list[tuple[str, int]]:
        """``("clean", 0)`` first, then every kind x severity."""
        return [("clean", 0)] + [(k, s) for k in self.kinds for s in self.severities]

    @classmethod
    def from_config(cls, cfg: Any, spatial_dims: int | None = None, channels: int | None = None) -> "ShiftSettings | None":
        """None when the testbed is off (no kinds and ``groups`` false); a :class:`ConfigError` naming
        the key otherwise for any bad value (with the image's dimensions and channels when known)."""
        if not cfg:
            return None
        kinds = [str(k) for k in _as_list(cfg.get("kinds"), "kinds")]
        groups = cfg.get("groups", False)
        if not isinstance(groups, bool):
            raise ConfigError(f"{WHERE}.groups={groups!r}: expected true or false")
        if not kinds and not groups:
            return None
        severities = _as_list(cfg.get("severities", [1, 2, 3]), "severities")
        for key, values in (("kinds", kinds), ("severities", severities)):
            twice = sorted({str(v) for v in values if values.count(v) > 1})
            if twice:
                raise ConfigError(f"{WHERE}.{key}: {', '.join(twice)} is listed more than once")
        for k in kinds:
            if k not in KINDS:
                raise ConfigError(f"{WHERE}.kinds: unknown corruption {k!r}; choose from {', '.join(KINDS)} "
                                  f"({', '.join(RGB_ONLY)}: 2-D RGB images only)")
        if kinds and not severities:
            raise ConfigError(f"{WHERE}.severities: give at least one severity in 1..5")
        for s in severities:
            if isinstance(s, bool) or not isinstance(s, int) or s not in SEVERITY_LEVELS:
                raise ConfigError(f"{WHERE}.severities: {s!r}: each severity is an integer in 1..5")
        for k in kinds:
            check_kind(k, severities[0], spatial_dims, channels, where=f"{WHERE}.kinds")
        seed = cfg.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{WHERE}.seed={seed!r}: expected an integer >= 0")
        fail = cfg.get("fail_dice", 0.8)
        if isinstance(fail, bool) or not isinstance(fail, (int, float)) or not 0 < fail <= 1:
            raise ConfigError(f"{WHERE}.fail_dice={fail!r}: expected a Dice in (0, 1] (a case below it fails)")
        recal = cfg.get("recalibrate", True)
        if not isinstance(recal, bool):
            raise ConfigError(f"{WHERE}.recalibrate={recal!r}: expected true or false")
        return cls(tuple(kinds), tuple(int(s) for s in severities), int(seed), float(fail),
                   _referral(cfg.get("case_referral")), recal, groups)

    def too_few(self, n_val: int) -> str | None:
        """Why ``n_val`` clean validation cases cannot calibrate the case referral (None: they can)."""
        ref = self.case_referral
        if ref is None or n_val >= ref.min_cases():
            return None
        return (f"{WHERE}.case_referral: {n_val} validation cases are too few for {ref.method} alpha={ref.alpha:g}"
                + (f" delta={ref.delta:g}" if ref.method == "ltt" else "") + f" (needs >= {ref.min_cases()}); "
                "the case referral is left out (use more validation cases or a larger alpha)")


def _referral(cfg: Any) -> CaseReferralSettings | None:
    where = f"{WHERE}.case_referral"
    if not cfg or cfg.get("alpha") is None:
        if cfg and cfg.get("among", "all") != "all":
            raise ConfigError(f"{where}.among={cfg.get('among')!r} has no effect with the case referral off "
                              f"({where}.alpha=null); set an alpha or drop it")
        return None
    alpha, method, delta = cfg.get("alpha"), cfg.get("method", "crc"), cfg.get("delta", 0.1)
    among = cfg.get("among", "all")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"{where}.alpha={alpha!r}: expected a fraction of cases in (0, 1) (null: off)")
    if method not in METHODS:
        raise ConfigError(f"{where}.method={method!r}: choose from {list(METHODS)}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise ConfigError(f"{where}.delta={delta!r}: expected a number in (0, 1)")
    if among not in AMONG:
        raise ConfigError(f"{where}.among={among!r}: choose from {list(AMONG)}")
    if among == "accepted" and method != "ltt":
        raise ConfigError(f"{where}.among=accepted needs method=ltt: the fraction of accepted cases that fail "
                          "is not monotone in the threshold, which CRC needs")
    return CaseReferralSettings(float(alpha), str(method), float(delta), str(among))
