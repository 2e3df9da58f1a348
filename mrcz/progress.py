"""A progress line on stderr (items, bytes, MB/s, ratio, ETA), drawn only on a terminal."""
from __future__ import annotations

import os
import sys
import time
from typing import TextIO

_WIDTH = 24
_MIN_INTERVAL = 0.2


def human_bytes(nbytes: float) -> str:
    """A byte count for people: B, kB, MB or GB."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{int(nbytes)} B"


def human_seconds(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration."""
    seconds = int(round(max(seconds, 0.0)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Count finished items (and bytes) and redraw one status line.

    Parameters
    ----------
    total : number of items expected.
    label : text shown before the bar.
    stream : where to draw (default ``sys.stderr``).
    enabled : draw the bar; default: only when ``stream`` is a terminal and the
        environment does not set ``MRCZ_NO_PROGRESS``.
    total_bytes : input bytes expected; with it the line shows MB/s and an ETA.
    """

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None,
                 enabled: bool | None = None, total_bytes: int = 0) -> None:
        self.total = max(int(total), 0)
        self.total_bytes = max(int(total_bytes), 0)
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            enabled = is_terminal(self.stream) and not os.environ.get("MRCZ_NO_PROGRESS")
        self.enabled = bool(enabled) and self.total > 0
        self.done = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.in_flight: dict[str, tuple[int, int]] = {}  # name -> (bytes done, bytes total)
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, n: int = 1, item: str = "", in_bytes: int = 0, out_bytes: int = 0) -> None:
        """Mark ``n`` more items finished; ``item`` names the latest one."""
        self.done += n
        self.bytes_in += in_bytes
        self.bytes_out += out_bytes
        self.in_flight.pop(item, None)
        self._maybe_draw(force=self.done >= self.total)

    def partial(self, item: str, done_bytes: int, item_bytes: int) -> None:
        """Report that ``done_bytes`` of ``item``'s ``item_bytes`` are processed."""
        self.in_flight[item] = (min(done_bytes, item_bytes), item_bytes)
        self._maybe_draw()

    def write(self, message: str, stream: TextIO | None = None) -> None:
        """Print a line of text without breaking the bar (to ``stream``, default stdout)."""
        out = sys.stdout if stream is None else stream
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        out.write(message + "\n")
        out.flush()
        if self.enabled:
            self._draw()

    def line(self) -> str:
        """The status line as it is drawn now."""
        elapsed = max(time.monotonic() - self._start, 1e-9)
        partial = sum(done for done, _ in self.in_flight.values())
        processed = self.bytes_in + partial
        if self.total_bytes:
            fraction = min(processed / self.total_bytes, 1.0)
        else:
            fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(round(fraction * _WIDTH))
        bar = f"{self.label} [{'#' * filled}{'-' * (_WIDTH - filled)}] "
        parts = [f"{self.done}/{self.total} files"]
        if self.total_bytes:
            rate = processed / elapsed
            parts.append(f"{human_bytes(processed)}/{human_bytes(self.total_bytes)}")
            parts.append(f"{rate / 1e6:.1f} MB/s")
            if self.bytes_out:
                parts.append(f"ratio {self.bytes_in / self.bytes_out:.2f}")
            if rate > 0 and processed:
                parts.append(f"ETA {human_seconds((self.total_bytes - processed) / rate)}")
        parts.append(human_seconds(elapsed))
        current = [f"{os.path.basename(name)[-24:]} {100 * done / total:.0f}%"
                   for name, (done, total) in list(self.in_flight.items())[:2] if total]
        return bar + ", ".join(parts) + (" | " + " ".join(current) if current else "")

    def _maybe_draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (force or now - self._last >= _MIN_INTERVAL):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        self.stream.write("\r\x1b[K" + self.line())
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


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
