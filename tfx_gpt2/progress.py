"""Progress lines a person can follow: counts, rates and, when the total is known, an ETA."""

from __future__ import annotations

import logging
import time
from typing import Optional


def get_logger(name: str) -> logging.Logger:
    """A logger that prints INFO lines even when nothing configured logging (TFX components)."""
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


class Progress:
    """Logs `what: n/total units (rate/s, ETA)` at most every `every_s` seconds.

    Args:
        logger: where lines go.
        what: the step being measured, e.g. "encode train".
        unit: the unit counted, e.g. "docs".
        total: the expected count, if known (enables percentages and the ETA).
        every_s: the least seconds between two lines.
    """

    def __init__(self, logger: logging.Logger, what: str, unit: str,
                 total: Optional[int] = None, every_s: float = 10.0):
        self.logger, self.what, self.unit, self.total, self.every_s = logger, what, unit, total, every_s
        self.count = 0
        self.extra = {}
        self.start = self._last = time.monotonic()

    def update(self, n: int = 1, **extra) -> None:
        """Counts `n` more units; `extra` counters (e.g. tokens=...) are summed and shown too."""
        self.count += n
        for k, v in extra.items():
            self.extra[k] = self.extra.get(k, 0) + v
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.logger.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        parts = [f"{self.what}: {self.count:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"]
        parts.append(f"{self.count / elapsed:,.1f} {self.unit}/s")
        for k, v in self.extra.items():
            parts.append(f"{v:,} {k} ({v / elapsed:,.0f} {k}/s)")
        if self.total and self.count:
            eta = elapsed * (self.total - self.count) / self.count
            parts.append(f"ETA {eta:,.0f}s")
        return ", ".join(parts)

    def done(self) -> None:
        elapsed = time.monotonic() - self.start
        self.logger.info(self.line() + f" -- done in {elapsed:,.1f}s")
