"""Small helpers shared by the benchmark scripts.

The scripts run from a plain checkout (``python benchmarks/NAME.py``), also on machines where
the package is not installed, so they import ``lungseg`` from the checkout's root.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def use_repo_checkout():
    """Put the checkout's root first on ``sys.path``, so ``import lungseg`` takes its package."""
    root = str(REPO_ROOT)
    while root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    return REPO_ROOT


def write_json(path, data):
    """Write ``data`` as JSON to ``path`` atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def format_table(headers, rows):
    """A plain-text table; cells are printed with ``str``, numbers (and '-') right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        all(_is_number(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]
    lines = []
    for index, row in enumerate(cells):
        parts = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _is_number(text):
    if text in ("-", ""):
        return True
    try:
        float(text.replace(",", "").rstrip("x%"))
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Shared by the CPU benchmarks (pipeline.py, training.py, inference.py). Nothing above this line
# changed, so gpu.py behaves as before.

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

# Look-alike LUS data generated once and reused by every benchmark run (ensure_dataset checks
# its manifest and regenerates only when the generator changed).
DEFAULT_CACHE = Path(
    os.environ.get("LUNGSEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "lungseg-bench")
)


def use_tensorflow_backend():
    """Select Keras' TensorFlow backend (the package's tf.data pipeline needs it) and quiet TF.

    Call before anything imports keras.
    """
    chosen = os.environ.get("KERAS_BACKEND", "tensorflow")
    if chosen != "tensorflow":
        print(
            f"note: KERAS_BACKEND={chosen} overridden: this benchmark runs on tensorflow",
            file=sys.stderr,
        )
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def say(*parts):
    print(*parts, flush=True)


def fmt(value, suffix="", digits=3):
    """Whole numbers (with thousands commas) from 100 up, ``digits`` significant digits below."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}g}{suffix}"


def pass_fail(ok):
    return "PASS" if ok else "FAIL"


def median(values):
    return statistics.median(values) if values else None


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


def model_list(text):
    allowed = ("vunet", "xunet")
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(v not in allowed for v in values):
        raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}; got {text!r}")
    return [v for v in allowed if v in values]


def benchmark_parser(doc, image_size, image_help, models=False):
    """The options every CPU benchmark shares; each script adds its own to the parser returned.

    ``doc`` is the script's docstring (its first paragraph is the description). ``models``
    adds the options of the model benchmarks: which models, and the matmul peak they compare to.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    add = parser.add_argument
    add("--json", metavar="FILE", help="write the results to FILE (JSON)")
    add("--image-size", type=image_side, default=image_size,
        help=f"side of the square model input (default {image_size}; {image_help})")
    add("--batch-size", type=positive_int, default=20, help="batch size (default 20, the paper's)")
    if models:
        add("--models", type=model_list, default=["vunet", "xunet"], help="vunet,xunet (default both)")
        add("--matmul-n", type=positive_int, default=4096,
            help="side of the matrices of the peak measurement (default 4096)")
    add("--cache", type=Path, default=DEFAULT_CACHE,
        help=f"where the generated LUS set is kept (default {DEFAULT_CACHE})")
    return parser


# --- the machine ---------------------------------------------------------------------------


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_fp16")
                return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def _memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def machine_info():
    """Where and when the numbers were taken: CPU, cores, memory, load, library versions."""
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "env": {
            key: os.environ.get(key)
            for key in ("KERAS_BACKEND", "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS",
                        "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
            if os.environ.get(key) is not None
        },
    }
    for module in ("numpy", "tensorflow", "keras", "cv2", "PIL", "scipy"):
        if module in sys.modules:
            info[module] = getattr(sys.modules[module], "__version__", None)
    return info


def machine_line(info):
    gib = f", {info['memory_gib']:.0f} GiB" if info.get("memory_gib") else ""
    load = info.get("load_average_1_5_15")
    load = f"; load average {load[0]:.2f} at start" if load else ""
    return f"{info['logical_cpus']}-CPU {info['machine']} ({info['cpu']}){gib}{load}"


class CpuMonitor:
    """CPU use while a block runs: this process's cores and everybody else's (Linux /proc/stat).

    ``own_cores`` is this process's CPU seconds (all its threads) per wall second;
    ``other_cores`` the rest of the machine's busy CPU seconds per wall second, i.e. how much
    other jobs competed with the measurement. Without /proc/stat ``other_cores`` is None.
    """

    def __enter__(self):
        self._wall = time.perf_counter()
        self._own = time.process_time()
        self._busy = _busy_cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall_s = time.perf_counter() - self._wall
        self.own_cpu_s = time.process_time() - self._own
        busy = _busy_cpu_seconds()
        self.busy_s = None if busy is None or self._busy is None else busy - self._busy
        return False

    def as_dict(self):
        wall = max(self.wall_s, 1e-9)
        other = None if self.busy_s is None else max(self.busy_s - self.own_cpu_s, 0.0) / wall
        return {
            "wall_s": round(self.wall_s, 3),
            "own_cores": round(self.own_cpu_s / wall, 2),
            "other_cores": None if other is None else round(other, 2),
        }


def _busy_cpu_seconds():
    """Busy CPU seconds of the whole machine since boot (all CPUs), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    busy = sum(values[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def merge_cpu(monitors):
    """One summary of several CpuMonitor blocks, weighted by their wall time."""
    return merge_cpu_dicts([m.as_dict() for m in monitors])


def merge_cpu_dicts(parts):
    """One summary of several ``CpuMonitor.as_dict()`` results, weighted by wall time."""
    parts = [p for p in parts if p]
    wall = sum(p["wall_s"] for p in parts)
    if not wall:
        return None
    own = sum(p["own_cores"] * p["wall_s"] for p in parts) / wall
    others = [p["other_cores"] for p in parts]
    other = (
        None if any(o is None for o in others)
        else sum(o * p["wall_s"] for o, p in zip(others, parts)) / wall
    )
    return {"wall_s": round(wall, 3), "own_cores": round(own, 2),
            "other_cores": None if other is None else round(other, 2)}


def contention_note(cpu, cores=None):
    """A line saying how busy the rest of the machine was, when it was."""
    cores = cores or os.cpu_count() or 1
    if not cpu or cpu.get("other_cores") is None:
        return "other jobs on the machine: unknown (no /proc/stat)"
    text = (
        f"this process used {cpu['own_cores']:.2f} of {cores} cores; other jobs used "
        f"{cpu['other_cores']:.2f} cores meanwhile"
    )
    if cpu["other_cores"] > 0.25:
        text += " (shared machine: absolute rates are low and noisy; side-by-side ratios count)"
    return text


# --- FLOPs and the matrix-multiply peak ----------------------------------------------------


def conv_flops(model):
    """Forward FLOPs per frame of every Conv2D / Conv2DTranspose layer, from the layers' shapes.

    Conv2D: 2 x kernel_h x kernel_w x in_ch x out_ch x out_h x out_w (multiply + add).
    Conv2DTranspose: 2 x kernel_h x kernel_w x in_ch x out_ch x in_h x in_w (every input pixel
    is spread over a kernel-sized patch). Bias adds, activations, pooling, concatenation and
    rescaling are left out (well under 1 % here). Returns ([(name, flops)], uncounted), where
    ``uncounted`` names layers that hold weights but are not convolutions.
    """
    import keras

    rows, uncounted, seen = [], [], set()
    for layer in model._flatten_layers(include_self=False):
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape
            kh, kw, c_out, c_in = layer.kernel.shape  # transposed: (kh, kw, out, in)
            rows.append((layer.name, 2 * height * width * kh * kw * c_in * c_out))
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
            rows.append((layer.name, 2 * height * width * kh * kw * c_in * c_out))
        elif layer.weights and not isinstance(layer, keras.Model):
            uncounted.append(layer.name)
    return rows, uncounted


def forward_flops(model):
    """Total forward FLOPs per frame (see ``conv_flops``)."""
    rows, _ = conv_flops(model)
    return sum(flops for _, flops in rows)


TRAIN_FLOPS_FACTOR = 3  # forward + gradients w.r.t. inputs and weights ~ 3x forward


def matmul_peak(n=4096, repeats=3, dtype="float32"):
    """This machine's matrix-multiply rate now: GFLOP/s = 2 n^3 / t of tf.linalg.matmul.

    One untimed warm-up multiply, then ``repeats`` timed ones, each waited for by fetching the
    sum of the product (n^2 adds next to 2 n^3: the fetch costs nothing measurable). Returns a
    dict with every rep's GFLOP/s and the best one.
    """
    import tensorflow as tf

    a = tf.random.stateless_normal([n, n], seed=[1, 2], dtype=dtype)
    b = tf.random.stateless_normal([n, n], seed=[3, 4], dtype=dtype)
    multiply = tf.function(lambda x, y: tf.reduce_sum(tf.linalg.matmul(x, y)))
    multiply(a, b).numpy()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        multiply(a, b).numpy()
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return {"n": n, "dtype": dtype, "gflop_per_s": [round(r, 1) for r in rates],
            "best_gflop_per_s": round(max(rates), 1)}


class PeakTracker:
    """Matrix-multiply peak measured several times during a run (between the measurements).

    On a shared machine the rate depends on what else runs; measuring it beside the
    benchmark's own blocks and taking the best rep gives the peak the machine offered.
    """

    def __init__(self, n=4096, repeats=3, dtype="float32"):
        self.n, self.repeats, self.dtype, self.samples = n, repeats, dtype, []

    def sample(self, label):
        result = matmul_peak(self.n, self.repeats, self.dtype)
        result["when"] = label
        self.samples.append(result)
        return result

    @property
    def best(self):
        return max((s["best_gflop_per_s"] for s in self.samples), default=None)

    def as_dict(self):
        rates = [r for s in self.samples for r in s["gflop_per_s"]]
        return {
            "method": f"tf.linalg.matmul of two {self.n}x{self.n} {self.dtype} matrices "
            "(tf.function), GFLOP/s = 2 n^3 / t, best rep counts",
            "best_gflop_per_s": self.best,
            "median_gflop_per_s": round(median(rates), 1) if rates else None,
            "samples": self.samples,
        }


# --- data ----------------------------------------------------------------------------------


def lus_dataset(n=200, seed=0, cache=None):
    """The generated 960x128 LUS phantom set in the paper's layout (``IMG/``, ``MASK/``).

    Written once by ``lungseg.data.ensure_dataset`` (which calls ``write_lus_dataset(n=...)``)
    under ``cache`` and reused. Returns (folder, seconds spent generating: 0 when reused).
    """
    from lungseg import data

    folder = Path(cache or DEFAULT_CACHE) / f"lus_{n}_seed{seed}"
    t0 = time.perf_counter()
    data.ensure_dataset("lus", folder, n=n, seed=seed)
    return folder, time.perf_counter() - t0


def load_lus_400(folder, image_size):
    """The paper's "400 LUS": 200 frames + mirror images at ``image_size`` (a side or a pair).

    ``folder`` must hold the paper's 200-frame set (``lus_dataset(n=300)`` holds all 300).

    Returns (FrameSet, seconds of find_pairs + load_frames + select_lus_frames).
    """
    from lungseg import data

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    t0 = time.perf_counter()
    pairs = data.find_pairs(folder)
    frames = data.load_frames(pairs, size)
    frames, _ = data.select_lus_frames(frames, 400, flips=True)
    return frames, time.perf_counter() - t0


def build_compiled_model(name, image_size, precision="float32", clear_session=True):
    """V-Unet (random VGG16 weights) or X-Unet for gray frames, compiled as lungseg.training does:
    Adam, ``lungseg.dice_loss``, metrics Dice, IoU and binary accuracy; its layers compute under
    the dtype policy ``precision`` (the sigmoid head in float32), which stays Keras' global
    policy afterwards. ``clear_session=False`` keeps models built before alive and usable."""
    import keras

    import lungseg

    if clear_session:
        keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(precision)
    shape = (image_size, image_size, 1)
    if name == "vunet":
        model = lungseg.build_vunet(input_shape=shape, encoder_weights=None)
    else:
        model = lungseg.build_xunet(input_shape=shape)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=1e-5),
        loss=lungseg.dice_loss,
        metrics=[lungseg.dice_coef, lungseg.iou, "binary_accuracy"],
    )
    return model
