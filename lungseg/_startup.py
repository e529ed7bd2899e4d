"""How a lungseg command keeps TensorFlow's start-up log off the terminal; lazy attributes.

``import lungseg`` changes nothing global: it imports neither Keras nor TensorFlow, sets no
environment variable and adds no import hook. Importing ``lungseg`` or any of its light
modules (``lungseg.cli``, ``lungseg.config``, ``lungseg.data``, ``lungseg.evaluation``, the
command modules) imports neither, so ``--help`` and option errors answer at once, and the data
tools never load them. A compiled model's Dice loss and metrics are registered with Keras when
``lungseg.losses`` is imported (``lungseg.model_files.load_model`` imports it).

A command (``lungseg.cli.run_main``) calls ``quiet_tensorflow`` before its work, unless
``--debug`` is on its command line; TensorFlow then starts without its log noise. What
silences each line on a CPU machine (TensorFlow 2.21):

    * ``cpu_feature_guard`` ("This TensorFlow binary is optimized ...") and other INFO and
      WARNING logs of TensorFlow's C++ code: ``TF_CPP_MIN_LOG_LEVEL=2``, set when the user has
      not set it. ERROR logs stay visible.
    * ``port.cc`` ("oneDNN custom operations are on"), ``cudart_stub.cc`` ("Could not find cuda
      drivers") and absl's banner "WARNING: All log messages before absl::InitializeLog() is
      called are written to STDERR": they are written while the libraries load, before
      TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` (each of its two libraries writes them once).
      An import hook therefore redirects file descriptor 2 to a temporary file while
      ``tensorflow`` is imported, and afterwards writes everything captured to stderr except
      the banner and the log lines below ``TF_CPP_MIN_LOG_LEVEL``. Python warnings and anything
      else pass. oneDNN stays on (``TF_ENABLE_ONEDNN_OPTS`` is not touched): only its notice
      is dropped.
    * ``cuda_platform.cc`` "failed call to cuInit: ... UNKNOWN ERROR (303)", an ERROR: TensorFlow
      writes it when it first looks for GPUs on a machine without a CUDA driver. The physical
      devices are listed once inside the capture (which TensorFlow does anyway on first use),
      and the line is dropped only when the same capture said no CUDA driver was found, or it
      reports no CUDA device: on a GPU machine a failing cuInit stays visible.
"""

import importlib
import importlib.abc
import importlib.util
import os
import re
import sys
from contextlib import contextmanager

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
QUIET_LOG_LEVEL = "2"  # INFO and WARNING off, ERROR on
_ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+\s+[^\]\s]+\] ")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_NO_DRIVER = "Could not find cuda drivers"
_CUINIT_FAILED = "failed call to cuInit"
_NO_DEVICE = "CUDA_ERROR_NO_DEVICE"

_state = {"quiet": False, "set_level": False}


def quiet_tensorflow(debug=False):
    """Keep TensorFlow's start-up log off the terminal in this process (a command's), or with
    ``debug`` let it log as it would without lungseg. Too late once TensorFlow is imported."""
    _state["quiet"] = not debug
    if "tensorflow" in sys.modules:
        return
    if not debug and LOG_LEVEL_VARIABLE not in os.environ:
        os.environ[LOG_LEVEL_VARIABLE] = QUIET_LOG_LEVEL
        _state["set_level"] = True
    elif debug and _state["set_level"]:
        os.environ.pop(LOG_LEVEL_VARIABLE, None)
        _state["set_level"] = False
    if not debug and not any(isinstance(finder, _ImportHook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _ImportHook())


def filter_startup_log(text, min_level=None):
    """``text`` (what TensorFlow's import wrote to stderr) without its start-up noise.

    Drops absl's banner, log lines ("I0000 00:00:... file.cc:12] ...") below ``min_level``
    (default: ``TF_CPP_MIN_LOG_LEVEL``, 0 when unset) and cuInit failures on a machine without
    a CUDA driver (see the module docstring). Every other line is kept, in order.
    """
    if min_level is None:
        min_level = _log_level()
    lines = text.splitlines(keepends=True)
    no_driver = any(_NO_DRIVER in line for line in lines)
    kept = []
    for line in lines:
        if line.rstrip("\r\n") == _ABSL_BANNER:
            continue
        match = _ABSL_LINE.match(line)
        if match:
            if _SEVERITY[match[1]] < min_level:
                continue
            if _CUINIT_FAILED in line and (no_driver or _NO_DEVICE in line):
                continue
        kept.append(line)
    return "".join(kept)


def _log_level():
    try:
        return int(os.environ.get(LOG_LEVEL_VARIABLE, "0"))
    except ValueError:
        return 0


@contextmanager
def filtered_stderr(min_level=None):
    """Capture file descriptor 2 (C/C++ writes included) and write it back filtered on exit."""
    import tempfile

    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    _flush_stderr()
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", errors="replace")
            _write_fd2(filter_startup_log(text, min_level))


def _flush_stderr():
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _write_fd2(text):
    data = text.encode("utf-8", errors="replace")
    while data:
        try:
            written = os.write(2, data)
        except OSError:
            return
        data = data[written:]


def _exec_tensorflow(exec_module, module):
    if not _state["quiet"]:
        exec_module(module)
        return
    with filtered_stderr():
        exec_module(module)
        try:  # TensorFlow looks for GPUs here rather than on first use: its cuInit line is caught
            module.config.list_physical_devices()
        except Exception:  # a failure here shows again on first use
            pass


_WATCHED = {"tensorflow": _exec_tensorflow}


class _ImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loading of the modules in ``_WATCHED``."""

    def __init__(self):
        self._finding = set()

    def find_spec(self, name, path=None, target=None):
        action = _WATCHED.get(name)
        if action is None or name in self._finding:
            return None
        self._finding.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._finding.discard(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module):
            del loader.exec_module  # this loader instance serves this one module
            action(original, module)

        loader.exec_module = exec_module
        return spec


def lazy_attributes(package, names):
    """PEP 562 ``__getattr__`` and ``__dir__`` for ``package`` (its ``__name__``): each name
    of ``names`` (public name -> module, relative to ``package`` when it starts with a dot)
    is imported on first use and then kept in the package's namespace."""
    import importlib
    import sys

    def __getattr__(name):
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(names))

    return __getattr__, __dir__
