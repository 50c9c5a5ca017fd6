"""Progress for long work: a tqdm bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm


class Progress:
    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "step",
                 enabled: bool = True, plain_every: float = 10.0):
        tty = sys.stderr.isatty()
        self.enabled = enabled
        self.plain = enabled and not tty
        self.plain_every = plain_every
        self.desc = desc
        self.total = total
        self.n = initial
        self._last_plain = time.monotonic()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not (enabled and tty),
                        dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **fields) -> None:
        self.n += n
        if fields:
            self.bar.set_postfix({k: _fmt(v) for k, v in fields.items()}, refresh=False)
        self.bar.update(n)
        now = time.monotonic()
        if self.plain and (now - self._last_plain >= self.plain_every or self.n >= self.total):
            self._last_plain = now
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            print(f"{self.desc} {self.n}/{self.total} {extra}".strip(), file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """A line of output that does not break the bar (nothing when progress is off)."""
        if not self.enabled:
            return
        if self.bar.disable:
            print(message, flush=True)
        else:
            self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def warn(message: str) -> None:
    """'warning: …' on stderr, without breaking a progress bar that may be on screen."""
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)
