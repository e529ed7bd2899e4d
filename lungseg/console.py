"""Messages for the user: printed, and copied into the log file of the run being written.

Every command prints through :func:`log`, so a run folder's ``train.log`` holds what its
training printed (appended when a run resumes) without capturing Keras' live progress bars.
"""

import contextlib
import sys
from pathlib import Path

_log_files = []


def log(message, console=True):
    """Print ``message`` (unless ``console`` is False) and append it to the open log files."""
    if console:
        print(message, flush=True)
    for handle in _log_files:
        handle.write(f"{message}\n")
        handle.flush()


def warn(message):
    """A warning line: ``WARNING: message``, on stdout and in the log file."""
    log(f"WARNING: {message}")


@contextlib.contextmanager
def log_to(path):
    """Append every :func:`log` message to ``path`` while the block runs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        _log_files.append(handle)
        try:
            yield path
        finally:
            _log_files.remove(handle)


def interactive():
    """Whether stdout is a terminal (live progress bars) or a file or pipe (one line per step)."""
    return sys.stdout.isatty()
