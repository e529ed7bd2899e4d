"""Atomic writes: a file appears complete under its final name or not at all; a results folder
likewise (``written_whole``). Which output folders lungseg may replace:
``lungseg.runs.check_output_folder`` (it must not lie in a run folder, whose layout runs knows)."""

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from lungseg.errors import DataError


class DamagedFileError(DataError, ValueError):
    """A JSON file lungseg wrote can no longer be read (truncated, edited, not JSON)."""


def _named(error, path):
    """``error`` (an OSError) naming ``path`` when it names no file (a full disk does not)."""
    if isinstance(error, OSError) and not error.filename and error.errno is not None:
        return OSError(error.errno, error.strerror or os.strerror(error.errno), str(path))
    return error


def temporary_path(path, kind="tmp"):
    """Where lungseg writes ``path`` before renaming it into place (``kind`` "tmp"), or moves
    the ``path`` it replaces until the new one is in (``kind`` "old"): a hidden name beside it
    holding this process's id, so that a leftover of a killed process is recognised
    (``_tidy_leftovers``)."""
    path = Path(path)
    return path.with_name(f".{kind}-{os.getpid()}-{path.name}")


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was; an OSError
    that names no file (a full disk) is raised naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        named = _named(error, path)
        if named is error:
            raise
        raise named from error
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path, text=None):
    """The JSON in ``path`` (or in ``text``, read from it already); ``DamagedFileError`` (a
    ``DataError`` and a ``ValueError``) naming the file when it is not valid JSON (a missing
    file stays ``FileNotFoundError``)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8") if text is None else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedFileError(f"{path}: damaged or not JSON ({error}); restore it or delete "
                               "the folder it belongs to") from None


# --- folders ------------------------------------------------------------------------------


def resolved(path):
    """``path`` absolute, symbolic links and ``..`` resolved, ``~`` expanded: two spellings of
    one folder (relative and absolute, a trailing slash) compare equal."""
    return Path(path).expanduser().resolve()


def is_within(path, folder):
    """True when ``path`` is ``folder`` or lies inside it (resolved paths)."""
    path, folder = resolved(path), resolved(folder)
    return path == folder or folder in path.parents


def process_gone(pid):
    """True when no process ``pid`` runs on this machine (False when unsure: alive)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process, or not a PID here
        return False
    return False


def _tidy_leftovers(out):
    """What a killed ``written_whole`` of ``out`` left beside it: its temporary folder is
    removed, and a previous folder caught between the two renames is put back."""
    for kind in ("old", "tmp"):
        for path in sorted(out.parent.glob(f".{kind}-*-{out.name}")):
            pid = path.name[len(kind) + 2:-len(out.name) - 1]
            if not pid.isdigit() or not process_gone(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def written_whole(out):
    """Yield a temporary folder beside ``out`` to write into; on success it replaces ``out``
    (the previous one is removed only once the new one is in place); on an exception or an
    interruption, or when the caller removed the temporary folder (nothing to show), it is
    removed and ``out`` is left as it was."""
    out = resolved(out)  # "." or "x/" have a name to put beside
    out.parent.mkdir(parents=True, exist_ok=True)
    _tidy_leftovers(out)
    tmp, old = temporary_path(out), temporary_path(out, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        yield tmp
        if not tmp.exists():
            return
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists() and not out.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        if error.errno == errno.ENOSPC and not error.filename:
            raise _named(error, out) from error
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
