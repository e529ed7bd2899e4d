"""Which compute precision a run trains in: the ``auto`` choice and the warnings of a poor one.

``auto`` (the CPU-sized ``quick`` preset's setting for V-Unet) trains in ``mixed_bfloat16`` on
a CPU that has bfloat16 instructions (AVX-512 BF16 or AMX), where TensorFlow's oneDNN kernels
use them: on an AMD EPYC with AVX-512 BF16 (no AMX), shared with other jobs, 128x128 batch-20
training steps ran 1.8x (X-Unet) and 1.5-2.4x (V-Unet) float32's rate in two runs, and whole
quick runs took 1.5-1.8x less time; about 3x was reported on an Intel CPU with AMX. Everywhere
else it stays float32: on a CPU without those instructions bfloat16 is emulated, and with
oneDNN turned off (``TF_ENABLE_ONEDNN_OPTS=0``) TensorFlow's bfloat16 training steps ran
10-25x slower than float32 even on that EPYC. With a GPU ``auto`` leaves float32 too (choose
``mixed_float16`` there yourself).

The caller says whether a GPU is present, so nothing here asks TensorFlow.
"""

import os

from lungseg.config import PRECISIONS
from lungseg.machine import cpu_info

# CPU flags (as Linux names them in /proc/cpuinfo) of bfloat16 arithmetic in hardware.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo=None):
    """The bfloat16 instruction sets this CPU has, as a tuple of flag names (empty: none).

    Read from ``/proc/cpuinfo`` (Linux, ``lungseg.machine.cpu_info``) unless ``cpuinfo`` gives
    its text; on other systems, or when it cannot be read, the answer is ``()``: no bfloat16
    is assumed.
    """
    flags = set((cpu_info(cpuinfo) or {}).get("flags", ()))
    return tuple(flag for flag in BF16_FLAGS if flag in flags)


def onednn_disabled(environ=None):
    """True when ``TF_ENABLE_ONEDNN_OPTS`` turns TensorFlow's oneDNN kernels off."""
    value = (os.environ if environ is None else environ).get("TF_ENABLE_ONEDNN_OPTS", "")
    return value.strip().lower() in ("0", "false", "no", "off")


def choose_precision(requested, gpu, saved=None, cpuinfo=None, environ=None):
    """The dtype policy to train in, and one line saying why (or what is wrong with it).

    ``requested`` is the configured precision; only ``"auto"`` is resolved, here in this
    order: the precision ``saved`` in the run folder being resumed (a run keeps the precision
    it started with, on whatever machine it resumes), float32 with a GPU, mixed_bfloat16 on
    a CPU with bfloat16 instructions and oneDNN on, else float32. A precision given
    explicitly is kept; the line then warns when it is a slow choice for this machine.
    Returns ``(policy, line, is_warning)``.
    """
    if requested == "auto":
        if saved in PRECISIONS:
            _, line, warning = choose_precision(saved, gpu, cpuinfo=cpuinfo, environ=environ)
            why = "as the run being resumed started with"
            return saved, (f"{line} ({why})" if warning else f"precision auto: {saved}, {why}"), warning
        if gpu:
            return ("float32", "precision auto: float32 (a GPU is present; --precision "
                    "mixed_float16 uses its float16 units)", False)
        flags = cpu_bf16_flags(cpuinfo)
        if not flags:
            return ("float32", "precision auto: float32 (no bfloat16 instructions, "
                    f"{' or '.join(BF16_FLAGS)}, found on this CPU)", False)
        if onednn_disabled(environ):
            return ("float32", f"precision auto: float32 (the CPU has {', '.join(flags)}, but "
                    "TF_ENABLE_ONEDNN_OPTS=0 turns off the oneDNN kernels that use it)", False)
        return ("mixed_bfloat16", f"precision auto: mixed_bfloat16 (the CPU has "
                f"{', '.join(flags)}; the sigmoid head and Dice sums stay float32)", False)
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}")
    if requested == "mixed_float16" and not gpu:
        return requested, (
            "mixed_float16 without a GPU trains far slower than float32 (5.6x slower "
            "measured on an AMD EPYC): CPUs have no fast float16 arithmetic; use --precision "
            "mixed_bfloat16 on a CPU with AVX-512 BF16 or AMX, else float32"
        ), True
    if requested == "mixed_bfloat16" and not gpu:
        flags = cpu_bf16_flags(cpuinfo)
        if not flags or onednn_disabled(environ):
            why = ("TF_ENABLE_ONEDNN_OPTS=0 turns off the oneDNN kernels that use this CPU's "
                   "bfloat16 instructions" if flags else
                   f"this CPU has no bfloat16 instructions ({' or '.join(BF16_FLAGS)})")
            return requested, (
                f"mixed_bfloat16 will likely train slower than float32 here: {why}"
            ), True
    return requested, f"precision: {requested}", False
