"""Messages for the user: printed, and copied into the log file of the run being written.

Every command prints through :func:`log` and :func:`warn`, so a run folder's ``train.log``
holds what its training printed (appended when a run resumes) without capturing Keras' live
progress bars, and what the command printed before the run folder existed (the data read and
checked first). The data readers, a library layer, warn through :mod:`logging`;
:func:`command_messages` hands those records to :func:`warn` while a command runs.
"""

import contextlib
import logging
import sys
from pathlib import Path

_log_files = []
_before_log = None  # what the running command printed while no log file was open; None: no command


def log(message, console=True, stream=None):
    """Print ``message`` (unless ``console`` is False; on ``stream``, stdout by default) and
    append it to the open log files."""
    if console:
        print(message, file=stream or sys.stdout, flush=True)
    if _before_log is not None and not _log_files:
        _before_log.append(message)
    for handle in _log_files:
        handle.write(f"{message}\n")
        handle.flush()


def warn(message):
    """``warning: message`` on stderr, as errors are ``error: ...``, and in the log file; each
    line of a message of several lines gets the prefix."""
    log("\n".join(f"warning: {line}" for line in str(message).splitlines()), stream=sys.stderr)


class _WarningHandler(logging.Handler):
    def emit(self, record):
        warn(record.getMessage())


@contextlib.contextmanager
def command_messages():
    """While a command runs: warnings logged under ``lungseg`` (the data readers') go through
    :func:`warn`, in one style; and what it prints before a log file opens is kept, for
    :func:`log_to` to write first. Nothing is left installed after."""
    global _before_log
    logger = logging.getLogger("lungseg")
    handler = _WarningHandler(logging.WARNING)
    logger.addHandler(handler)
    _before_log = []
    try:
        yield
    finally:
        logger.removeHandler(handler)
        _before_log = None


@contextlib.contextmanager
def log_to(path):
    """Append every :func:`log` message to ``path`` while the block runs, after those the
    command printed before (see :func:`command_messages`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        if _before_log:
            handle.write("".join(f"{message}\n" for message in _before_log))
            _before_log.clear()
        _log_files.append(handle)
        try:
            yield path
        finally:
            _log_files.remove(handle)


def interactive():
    """Whether stdout is a terminal (live progress bars) or a file or pipe (one line per step)."""
    return sys.stdout.isatty()
