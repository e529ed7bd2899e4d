"""A one-line text progress bar for long loops over files.

``keras.utils.Progbar`` would do, but importing Keras costs several seconds, which the data
generators and their command line do not otherwise need.
"""

import sys
import time


def progress(items, total=None, label="", enabled=True, stream=None):
    """Yield from ``items`` while drawing ``label  12/200 [====>      ] 3.1 s`` on stderr."""
    if not enabled:
        yield from items
        return
    stream = stream or sys.stderr
    total = len(items) if total is None else total
    start = time.monotonic()
    shown = -1

    def draw(done):
        width = 30
        filled = width * done // max(total, 1)
        bar = "=" * filled + (">" if filled < width else "") + " " * (width - filled - 1)
        stream.write(f"\r{label} {done:>{len(str(total))}}/{total} [{bar}] "
                     f"{time.monotonic() - start:.1f} s")
        stream.flush()

    done = 0
    draw(0)
    for item in items:
        yield item
        done += 1
        percent = 100 * done // max(total, 1)
        if percent != shown:
            shown = percent
            draw(done)
    stream.write("\n")
    stream.flush()
