"""A minimal progress bar on stderr, drawn only when stderr is a terminal."""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

_WIDTH = 30
_MIN_INTERVAL = 0.1


class Progress:
    """Count finished items and redraw one status line.

    Parameters
    ----------
    total : number of items expected.
    label : text shown before the bar.
    stream : where to draw (default ``sys.stderr``).
    enabled : draw the bar; default: only when ``stream`` is a terminal and the
        environment does not set ``MRCZ_NO_PROGRESS``.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.total = max(int(total), 0)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = _is_terminal(self.stream) and not os.environ.get("MRCZ_NO_PROGRESS")
        self.enabled = bool(enabled) and self.total > 0
        self.done = 0
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, n: int = 1, item: str = "") -> None:
        """Mark ``n`` more items finished; ``item`` names the latest one."""
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= _MIN_INTERVAL or self.done >= self.total):
            self._last = now
            self._draw(item)

    def write(self, message: str, stream: TextIO | None = None) -> None:
        """Print a line of text without breaking the bar (to ``stream``, default stdout)."""
        out = sys.stdout if stream is None else stream
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        out.write(message + "\n")
        out.flush()
        if self.enabled and self.done:
            self._draw("")

    def _draw(self, item: str) -> None:
        fraction = min(self.done / self.total, 1.0)
        filled = int(round(fraction * _WIDTH))
        bar = "#" * filled + "-" * (_WIDTH - filled)
        elapsed = time.monotonic() - self._start
        tail = os.path.basename(item)[-30:]
        line = (f"{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s {tail}")
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()

    def close(self) -> None:
        """End the status line (nothing is printed when the bar is off)."""
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
