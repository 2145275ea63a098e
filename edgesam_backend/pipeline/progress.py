"""A small progress line on stderr: done/total, images/s, ETA, masks, skips and failures.

On a terminal the line is redrawn in place (at most 10 times a second); otherwise (logs, CI) a line is
printed every ``interval`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .worker import Outcome


def _hms(seconds: float) -> str:
    s = int(max(0, round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(
        self, total: int, *, stream: TextIO | None = None, enabled: bool = True, interval: float = 5.0
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.1 if self.tty else interval
        self.t0 = time.perf_counter()
        self.done = self.skipped = self.failed = self.masks = 0
        self._last = 0.0
        self._shown_state: tuple[int, int, int] | None = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def rate(self) -> float:
        n = self.done + self.failed
        return n / self.elapsed if n and self.elapsed > 0 else 0.0

    def update(self, out: Outcome) -> None:
        if out.status == "done":
            self.done += 1
            self.masks += out.masks
        elif out.status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        now = time.perf_counter()
        finished = self.done + self.skipped + self.failed >= self.total
        if self.enabled and (now - self._last >= self.interval or finished):
            self._last = now
            self._draw()

    def line(self) -> str:
        n = self.done + self.skipped + self.failed
        pct = 100.0 * n / self.total if self.total else 100.0
        rate = self.rate
        remaining = self.total - n
        eta = _hms(remaining / rate) if rate > 0 else "?"
        return (
            f"edgesam: {n}/{self.total} images ({pct:.0f}%) | {rate:.2f} img/s | ETA {eta} | "
            f"{self.masks} masks | {self.skipped} already done | {self.failed} failed | {_hms(self.elapsed)}"
        )

    def _draw(self) -> None:
        text = self.line()
        state = (self.done, self.skipped, self.failed)
        if state == self._shown_state and not self.tty:
            return
        self._shown_state = state
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()

    def message(self, text: str) -> None:
        """A line that is always shown (failures), also without the progress line."""
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(text + "\n")
        self.stream.flush()


__all__ = ["Progress"]
