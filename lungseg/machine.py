"""The machine a run trained on: versions, devices, threads and CPU features, for its record.

``cpu_info`` is the one reader of ``/proc/cpuinfo``; ``lungseg.precision`` asks it whether the
CPU has bfloat16 instructions.
"""

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# The CPU features (Linux flag names) that change oneDNN's kernels, recorded with each run.
RECORDED_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu_info(text=None, path=None):
    """``{"model": name or None, "flags": [...]}`` of this CPU, read from ``/proc/cpuinfo``
    (``path``) unless ``text`` gives its contents; None when it cannot be read (not Linux)."""
    if text is None:
        try:
            text = Path(path or CPUINFO).read_text()
        except OSError:
            return None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model is None:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = value.split()
    return {"model": model, "flags": flags or []}


def environment(strategy=None, precision=None, workers=1):
    """Versions, devices, threads and CPU features of this process, for the run's record.

    ``workers``: the processes training together (several under ``MultiWorkerMirroredStrategy``;
    the devices listed are this process's), ``replicas`` the model copies over all of them.

    Results can differ between machines of one kind: oneDNN picks kernels by CPU features
    (AVX-512, BF16, AMX) and thread count, which changes float rounding and so training.
    """
    import keras
    import numpy
    import tensorflow as tf

    import lungseg

    devices = tf.config.list_logical_devices()
    return {
        "versions": {
            "lungseg": lungseg.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "devices": [{"kind": d.device_type, "name": d.name} for d in devices],
        "device_count": {kind: sum(d.device_type == kind for d in devices) for kind in sorted({d.device_type for d in devices})},
        "cpu": _recorded_cpu(),
        "threads": {
            "cpus": os.cpu_count(),
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        },
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"),
        "strategy": _strategy_name(strategy),
        "workers": workers,
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "precision": precision,
        "tf32": tf.config.experimental.tensor_float_32_execution_enabled(),  # float32 matmuls in TF32
        "platform": platform.platform(),
    }


def _recorded_cpu():
    """The CPU's model name and the features that change oneDNN's kernels."""
    info = cpu_info()
    if info is None:
        return {"model": platform.processor() or None, "features": []}
    return {"model": info["model"], "features": [flag for flag in RECORDED_FEATURES if flag in info["flags"]]}


def _strategy_name(strategy):
    """The strategy's public name (``MultiWorkerMirroredStrategy``'s class is called
    ``CollectiveAllReduceStrategy``)."""
    if strategy is None:
        return None
    name = type(strategy).__name__
    return {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}.get(name, name)
