"""Progress of long steps (loading frames, generating data, segmenting), on stderr.

On a terminal a live bar is redrawn in place::

    loading frames  48/120 [===========>                  ] 1.2 s

Anywhere else (a log file, a pipe, a notebook's captured stream) carriage returns would pile
up into one long line, so plain lines are written instead: one at the start, one about every
10 %, one at the end; no carriage return, colour or other control code::

    loading frames 0/120
    loading frames 12/120 (10%) 0.3 s
    ...
    loading frames 120/120 (100%) 3.1 s

Standard library only, so the data tools and command lines can report progress without
importing Keras (whose ``Progbar`` also writes colour codes to stdout).
"""

import sys
import time

BAR_WIDTH = 30


class Progress:
    """Progress of ``total`` units of work, reported on ``stream`` (default: ``sys.stderr``).

    Call ``advance(n)`` as units finish and ``close()`` at the end (or use ``with``). ``live``
    chooses the redrawn bar; by default it is used when ``stream`` is a terminal.
    ``enabled=False`` writes nothing.
    """

    def __init__(self, total, label="", stream=None, live=None, enabled=True):
        self.stream = stream if stream is not None else sys.stderr
        self.total = max(int(total), 0)
        self.label = label
        self.live = _is_terminal(self.stream) if live is None else live
        self.done = 0
        self.closed = not enabled
        self._start = time.monotonic()
        self._shown = -1  # last percent drawn (live) or tenth written (lines)
        if not enabled:
            return
        if self.live:
            self._shown = self._percent()
            self._draw()
        else:
            self._line(f"{self.label} 0/{self.total}")

    def advance(self, n=1):
        self.done += n
        if self.closed:
            return
        if self.live:
            percent = self._percent()
            if percent != self._shown:
                self._shown = percent
                self._draw()
        else:
            tenth = self._percent() // 10
            if tenth > max(self._shown, 0) and self.done < self.total:
                self._shown = tenth
                self._line(self._status())

    def close(self):
        """Finish the bar (live) or write the last line; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        if self.live:
            self._draw()  # the final count and time
            self._write("\n")
        elif self.done >= self.total:
            self._line(self._status())
        else:
            self._line(f"{self.label} stopped at {self.done}/{self.total} after {self._elapsed()}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _percent(self):
        return 100 if self.total == 0 else min(100, 100 * self.done // self.total)

    def _elapsed(self):
        return f"{time.monotonic() - self._start:.1f} s"

    def _status(self):
        return f"{self.label} {self.done}/{self.total} ({self._percent()}%) {self._elapsed()}"

    def _draw(self):
        filled = BAR_WIDTH * self._percent() // 100
        bar = "=" * filled + (">" if filled < BAR_WIDTH else "") + " " * (BAR_WIDTH - filled - 1)
        width = len(str(self.total))
        self._write(f"\r{self.label} {self.done:>{width}}/{self.total} [{bar}] {self._elapsed()}")

    def _line(self, text):
        self._write(text.lstrip() + "\n")

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()


def progress(items, total=None, label="", enabled=True, stream=None):
    """Yield from ``items`` while reporting ``Progress`` (``enabled=False``: just yield)."""
    if not enabled:
        yield from items
        return
    bar = Progress(len(items) if total is None else total, label, stream)
    try:
        for item in items:
            yield item
            bar.advance()
    finally:
        bar.close()


def _is_terminal(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
