"""Numbers for people: counts, FLOPs, bytes, durations, money and energy written the way a reader
scans them, and amounts like '70B' read back. Every command that prints such a figure uses these."""

from __future__ import annotations

import math
import re

from groundup.errors import ConfigError

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12, "p": 1e15}


def parse_amount(text: str | float, what: str = "value") -> float:
    """'70B', '1.4T', '350M', '3e23', 1e9 → a float."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmbgtp]?)\s*", str(text), re.IGNORECASE)
        if not m:
            raise ConfigError(f"{what}: expected a number such as 7e9, 70B, 1.4T or 350M; got {text!r}")
        value = float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return value


def human(x: float, unit: str = "") -> str:
    """A count of parameters or tokens: 1.23e9 → '1.23B', 7e9 → '7B' (3 significant digits)."""
    for scale, name in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{name}{unit}"
    return f"{x:.3g}{unit}"


def human_flops(x: float) -> str:
    """A FLOP count: 8.4e+22 (3 significant digits)."""
    return f"{x:.3g}"


def human_bytes(x: float) -> str:
    """Decimal units, as GPU datasheets use: 1.12e11 → '112 GB'."""
    for scale, name in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {name}"
    return f"{x:.0f} B"


def human_money(dollars: float) -> str:
    """$1,234,567 from $100 up; cents below."""
    if dollars >= 100:
        return f"${dollars:,.0f}"
    return f"${dollars:.2f}" if dollars >= 0.01 else f"${dollars:.2g}"


def human_time(seconds: float) -> str:
    """s under 2 minutes, min under 2 hours, h under 3 days, then days."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def human_energy(kwh: float, unit: str = "MWh") -> str:
    """Energy in the unit asked: 'MWh' with one decimal (training-run totals), 'kWh' with 3
    significant digits (small runs)."""
    if unit == "MWh":
        return f"{kwh / 1000:,.1f} MWh"
    return f"{kwh:.3g} kWh"


def plural(n: int, noun: str) -> str:
    """'1 GPU', '256 GPUs' (thousands separated)."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")
