"""Helpers shared by every benchmark script (``python benchmarks/NAME.py``).

The scripts import ``lungseg`` from this checkout, installed or not. Nothing here imports
Keras or TensorFlow until a function needs it: gpu.py runs where there is no TensorFlow.
"""

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("vunet", "xunet")
TRAIN_FLOPS_FACTOR = 3  # a training step ~ forward + gradients w.r.t. inputs and weights
# Generated LUS phantoms, written once and reused (ensure_dataset regenerates when stale).
DEFAULT_CACHE = Path(
    os.environ.get("LUNGSEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "lungseg-bench")
)


def setup(backend=None):
    """Put this checkout first on ``sys.path``; with ``backend``, make it Keras' backend.

    Call before anything imports keras.
    """
    if backend:
        chosen = os.environ.get("KERAS_BACKEND", backend)
        if chosen != backend:
            print(f"note: KERAS_BACKEND={chosen} overridden: this benchmark runs on {backend}",
                  file=sys.stderr)
        os.environ["KERAS_BACKEND"] = backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    root = str(REPO_ROOT)
    while root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    if backend:
        import lungseg  # noqa: F401  (light; its import hook keeps TensorFlow's start-up log quiet)


def say(*parts):
    print(*parts, flush=True)


def fmt(value, suffix=""):
    """Whole numbers (thousands commas) from 100 up, three significant digits below."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.0f}{suffix}" if abs(value) >= 100 else f"{value:.3g}{suffix}"


def median(values):
    return statistics.median(values) if values else None


def write_json(path, data):
    """Write ``data`` as JSON to ``path`` atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def format_table(headers, rows):
    """A plain-text table; columns of numbers (blanks and '-' allowed) right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [all(re.fullmatch(r"(-|[-+]?[\d,.]+(e[-+]?\d+)?[x%]?( \(.*\))?)?", row[i])
                 for row in cells[1:]) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right))
             .rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# --- command lines ---------------------------------------------------------------------------


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def image_side(text):
    value = int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16, got {value}")
    return value


def choice_list(allowed):
    """Parser of a comma-separated subset of ``allowed`` (kept in the order given)."""
    def parse(text):
        values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}; got {text!r}")
        return values
    return parse


def benchmark_parser(doc, image_size, models=False, matmul=False, cache=True):
    """The options the model benchmarks share; each script adds its own to the parser."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add = parser.add_argument
    add("--json", metavar="FILE", help="write the results to FILE (JSON)")
    add("--image-size", type=image_side, default=image_size,
        help=f"side of the square model input (default {image_size}; the paper's is 256)")
    add("--batch-size", type=positive_int, default=20, help="batch size (default 20, the paper's)")
    if models:
        add("--models", type=choice_list(MODELS), default=list(MODELS),
            help="vunet,xunet (default both)")
    if matmul:
        add("--matmul-n", type=positive_int, default=4096,
            help="side of the matrices of the matmul peak (default 4096)")
    if cache:
        add("--cache", type=Path, default=DEFAULT_CACHE,
            help=f"where the generated LUS set is kept (default {DEFAULT_CACHE})")
    return parser


# --- the machine and how busy it was ---------------------------------------------------------


def _proc(path, key):
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine_info():
    """Where and when the numbers were taken: CPU, its bfloat16 features, load, versions."""
    flags = set((_proc("/proc/cpuinfo", "flags") or "").split())
    memory = _proc("/proc/meminfo", "MemTotal")
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _proc("/proc/cpuinfo", "model name") or platform.processor(),
        "cpu_flags": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "env": {k: os.environ[k] for k in ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS",
                                           "OMP_NUM_THREADS") if k in os.environ},
    }
    return info | versions()


def versions():
    """Versions of the libraries imported so far."""
    return {m: getattr(sys.modules[m], "__version__", None)
            for m in ("numpy", "tensorflow", "keras", "cv2", "PIL", "scipy") if m in sys.modules}


def machine_line(info):
    load = info["load_average_1_5_15"]
    return (f"{info['logical_cpus']}-CPU {info['machine']} ({info['cpu']}), "
            f"{info['memory_gib']} GiB" + (f"; load {load[0]:.2f} at start" if load else ""))


def header(title):
    """Say the title, the TensorFlow and Keras versions and the machine; return machine_info()."""
    import keras
    import tensorflow as tf

    info = machine_info()
    say(f"{title}: tensorflow {tf.__version__}, keras {keras.__version__}; {machine_line(info)}")
    return info


def finish(results, args, report, started):
    """Stamp the elapsed time, print the report, write the JSON if asked."""
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["machine"].update(versions())  # those imported during the run too
    report(results, args)
    if args.json:
        write_json(args.json, results)
        say(f"JSON written to {args.json}")


def _busy_cpu_seconds():
    """Busy CPU seconds of the whole machine since boot, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        values = [int(v) for v in fields[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


class CpuMonitor:
    """While a block runs: this process's cores (CPU s per wall s) and other jobs' cores."""

    def __enter__(self):
        self._start = time.perf_counter(), time.process_time(), _busy_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall, own, busy = self._start
        self.wall_s = time.perf_counter() - wall
        self.own_cpu_s = time.process_time() - own
        now = _busy_cpu_seconds()
        self.busy_s = None if now is None or busy is None else now - busy
        return False

    def as_dict(self):
        wall = max(self.wall_s, 1e-9)
        other = None if self.busy_s is None else max(self.busy_s - self.own_cpu_s, 0) / wall
        return {"wall_s": round(self.wall_s, 3), "own_cores": round(self.own_cpu_s / wall, 2),
                "other_cores": None if other is None else round(other, 2)}


def merge_cpu(parts):
    """One summary of several CpuMonitors (or their ``as_dict()``), weighted by wall time."""
    parts = [p.as_dict() if isinstance(p, CpuMonitor) else p for p in parts if p]
    wall = sum(p["wall_s"] for p in parts)
    if not wall:
        return None
    own = sum(p["own_cores"] * p["wall_s"] for p in parts) / wall
    other = (None if any(p["other_cores"] is None for p in parts)
             else round(sum(p["other_cores"] * p["wall_s"] for p in parts) / wall, 2))
    return {"wall_s": round(wall, 3), "own_cores": round(own, 2), "other_cores": other}


def contention_note(cpu):
    if not cpu or cpu["other_cores"] is None:
        return "other jobs on the machine: unknown (no /proc/stat)"
    text = (f"this process used {cpu['own_cores']:.2f} of {os.cpu_count()} cores, other jobs "
            f"{cpu['other_cores']:.2f}")
    if cpu["other_cores"] > 0.25:
        text += " (shared machine: absolute rates are noisy, side-by-side ratios count)"
    return text


# --- FLOPs and the matrix-multiply peak ------------------------------------------------------


def forward_flops(model):
    """Forward FLOPs per frame of the Conv2D / Conv2DTranspose layers (2 per multiply-add).

    A transposed convolution spreads every input pixel over a kernel-sized patch. Bias,
    activations, pooling and concatenation are left out (well under 1 % here).
    """
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape
            kh, kw, c_out, c_in = layer.kernel.shape
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
        else:
            continue
        total += 2 * height * width * kh * kw * c_in * c_out
    return total


class PeakTracker:
    """This machine's matrix-multiply rate (TensorFlow), sampled several times during a run.

    On a shared machine the rate depends on what else runs: the best rep of all samples is
    the peak the machine offered.
    """

    def __init__(self, n=4096, dtype="float32", repeats=3):
        self.n, self.dtype, self.repeats, self.samples = n, dtype, repeats, []

    def sample(self, label):
        import tensorflow as tf

        a = tf.random.stateless_normal([self.n, self.n], seed=[1, 2], dtype=self.dtype)
        multiply = tf.function(lambda x: tf.reduce_sum(tf.linalg.matmul(x, x)))
        multiply(a).numpy()  # trace and warm up
        rates = []
        for _ in range(self.repeats):
            t0 = time.perf_counter()
            multiply(a).numpy()  # the sum's fetch waits for the product, at no visible cost
            rates.append(round(2 * self.n**3 / (time.perf_counter() - t0) / 1e9, 1))
        self.samples.append({"when": label, "gflop_per_s": rates})
        return rates

    @property
    def best(self):
        return max(r for s in self.samples for r in s["gflop_per_s"])

    def as_dict(self):
        rates = [r for s in self.samples for r in s["gflop_per_s"]]
        return {"method": f"tf.linalg.matmul, {self.n}^2 {self.dtype}, GFLOP/s = 2 n^3 / t",
                "best_gflop_per_s": self.best, "median_gflop_per_s": median(rates),
                "samples": self.samples}


# --- data and models -------------------------------------------------------------------------


def lus_dataset(n=300, seed=0, cache=None):
    """The generated 960x128 LUS phantom set in the paper's layout (300 frames: the paper's
    200 are among them), written once under ``cache``. Returns (folder, seconds spent
    generating: about 0 when reused)."""
    from lungseg import data

    folder = Path(cache or DEFAULT_CACHE) / f"lus_{n}_seed{seed}"
    t0 = time.perf_counter()
    data.ensure_dataset("lus", folder, n=n, seed=seed)
    return folder, time.perf_counter() - t0


def load_lus_400(folder, image_size):
    """The paper's "400 LUS" (its 200 frames + mirror images) at ``image_size``; and the
    seconds of find_pairs + load_frames + select_lus_frames."""
    from lungseg import data

    t0 = time.perf_counter()
    frames = data.load_frames(data.find_pairs(folder), (image_size, image_size))
    frames, _ = data.select_lus_frames(frames, 400, flips=True)
    return frames, time.perf_counter() - t0


def build_model(name, image_size, precision="float32", clear_session=True):
    """V-Unet (random VGG16 weights) or X-Unet for gray frames, compiled as lungseg.training
    compiles it (Adam, Dice loss, Dice, IoU and accuracy metrics), its layers computing under
    the dtype policy ``precision`` (the head in float32), which stays the global policy."""
    import keras

    import lungseg

    if clear_session:
        keras.backend.clear_session()  # also resets the dtype policy: set it afterwards
    keras.mixed_precision.set_global_policy(precision)
    shape = (image_size, image_size, 1)
    if name == "vunet":
        model = lungseg.build_vunet(input_shape=shape, encoder_weights=None)
    else:
        model = lungseg.build_xunet(input_shape=shape)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-5), loss=lungseg.dice_loss,
                  metrics=[lungseg.dice_coef, lungseg.iou, "binary_accuracy"])
    return model
