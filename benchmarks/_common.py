"""Helpers shared by the benchmark scripts (``python benchmarks/NAME.py``).

Nothing here imports Keras or TensorFlow at module level: gpu.py runs without TensorFlow.
"""

import argparse
import math
import os
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TRAIN_FLOPS_FACTOR = 3  # a training step ~ forward + gradients w.r.t. inputs and weights
# Generated LUS phantoms, written once and reused (ensure_dataset regenerates when stale).
CACHE = Path(os.environ.get("LUNGSEG_BENCH_CACHE", Path(tempfile.gettempdir()) / "lungseg-bench"))


def setup(backend=None):
    """Put this checkout first on ``sys.path``; make ``backend`` Keras' (before any import)."""
    sys.path.insert(0, str(REPO_ROOT))
    if backend:
        if os.environ.get("KERAS_BACKEND", backend) != backend:
            print(f"note: KERAS_BACKEND overridden, this runs on {backend}", file=sys.stderr)
        os.environ["KERAS_BACKEND"] = backend
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from lungseg._startup import quiet_tensorflow

        quiet_tensorflow()  # as the commands: TensorFlow's start-up log kept quiet


def say(*parts):
    print(*parts, flush=True)


def fmt(value, suffix=""):
    """Whole numbers (thousands commas) from 100 up, three significant digits below."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.0f}{suffix}" if abs(value) >= 100 else f"{value:.3g}{suffix}"


def interleaved(calls, rounds, label=None):
    """Per key of ``calls``, the seconds, CpuMonitors and results of its calls, ABBA-ordered."""
    times, cpu, results = ({key: [] for key in calls} for _ in range(3))
    for index in range(rounds):
        for key in list(calls)[::-1] if index % 2 else calls:
            with CpuMonitor() as monitor:
                results[key].append(calls[key]())
            times[key].append(monitor.wall_s)
            cpu[key].append(monitor)
        if label:
            names = (" ".join(k) if isinstance(k, tuple) else k for k in times)
            say(f"  {label} {index + 1}/{rounds}: "
                + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in zip(names, times.values())))
    return times, cpu, results


def save(args, data):
    """Write ``data`` as JSON to ``--json FILE`` (atomically) if one was given."""
    if args.json:
        from lungseg.files import write_json

        write_json(args.json, data)
        say(f"JSON written to {args.json}")


def format_table(headers, rows):
    """A plain-text table; columns of numbers (blanks and '-' allowed) right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [all(re.fullmatch(r"(-|[-+]?[\d,.]+(e[-+]?\d+)?[x%]?( \(.*\))?)?", row[i])
                 for row in cells[1:]) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right))
             .rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def choice_list(allowed):
    """Parser of a comma-separated subset of ``allowed`` (kept in the order given)."""
    def parse(text):
        values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
        if not values or any(v not in allowed for v in values):
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}; got {text!r}")
        return values
    return parse


def parser(doc, **counts):
    """A parser with ``--json FILE`` and a positive integer ``--name`` per name=(default, help)."""
    from lungseg.cli import positive_int

    result = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    result.add_argument("--json", metavar="FILE", help="write the results to FILE (JSON)")
    for name, (default, text) in counts.items():
        result.add_argument(f"--{name.replace('_', '-')}", type=positive_int, default=default,
                            help=f"{text} (default {default})")
    return result


def benchmark_parser(doc, image_size, models=False, matmul=False, **counts):
    """``parser`` with the options the model benchmarks share."""
    from lungseg.cli import positive_int
    from lungseg.config import MODELS

    result = parser(doc, batch_size=(20, "batch size, the paper's"), **counts)
    add = result.add_argument
    add("--image-size", type=square_side, default=image_size,
        help=f"side of the square model input, a multiple of 16 (default {image_size}; the "
        "paper's is 256)")
    if models:
        add("--models", type=choice_list(MODELS), default=list(MODELS),
            help="vunet,xunet (default both)")
    if matmul:
        add("--matmul-n", type=positive_int, default=4096,
            help="side of the matrices of the matmul peak (default 4096)")
    return result


def square_side(text):
    """``--image-size``: the side of a square model input, a multiple of 16."""
    from lungseg.cli import image_size

    height, width = image_size(text)
    if height != width:
        raise argparse.ArgumentTypeError(f"one side (a square input), got {text!r}")
    return height


def header(title):
    """Say the title and the machine; return lungseg's record of it, with date and load."""
    from lungseg.machine import environment

    info = environment() | {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "load_average_1_5_15": list(os.getloadavg())}
    say(f"{title}: tensorflow {info['versions']['tensorflow']}, keras {info['versions']['keras']};"
        f" {info['cpu']['model']}, load {info['load_average_1_5_15'][0]:.2f} at start")
    return info


def finish(results, args, report, started):
    """Stamp the options and elapsed time, print the report, write the JSON if asked."""
    results["settings"] = vars(args) | results.get("settings", {})
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    report(results, args)
    say(f"total {results['elapsed_s']:.0f} s")
    save(args, results)


def _busy_cpu_seconds():
    """Busy CPU seconds of the whole machine since boot (less idle and iowait), or None."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class CpuMonitor:
    """While a block runs: its wall seconds, this process's CPU seconds and the machine's."""

    def __enter__(self):
        self._start = time.perf_counter(), time.process_time(), _busy_cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall, own, busy = self._start
        self.wall_s, self.own_cpu_s = time.perf_counter() - wall, time.process_time() - own
        now = _busy_cpu_seconds()
        self.busy_s = None if now is None or busy is None else now - busy


def merge_cpu(parts):
    """Seconds summed over CpuMonitors (or such summaries): this process's and other jobs' cores."""
    parts = [p if isinstance(p, dict) else vars(p) for p in parts if p]
    wall, own = sum(p["wall_s"] for p in parts), sum(p["own_cpu_s"] for p in parts)
    busy = None if any(p["busy_s"] is None for p in parts) else sum(p["busy_s"] for p in parts)
    other = None if busy is None else round(max(busy - own, 0) / wall, 2)
    return {"wall_s": round(wall, 3), "own_cpu_s": round(own, 3), "busy_s": busy,
            "own_cores": round(own / wall, 2), "other_cores": other}


def contention_note(cpu):
    if cpu["other_cores"] is None:
        return "other jobs on the machine: unknown (no /proc/stat)"
    shared = " (shared machine: absolute rates are noisy, side-by-side ratios count)"
    return (f"this process used {cpu['own_cores']:.2f} of {os.cpu_count()} cores, other jobs "
            f"{cpu['other_cores']:.2f}" + (shared if cpu["other_cores"] > 0.25 else ""))


def forward_flops(model):
    """Forward FLOPs per frame of the convolutions (2 per multiply-add; the rest is < 1 %)."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2DTranspose):  # each input pixel -> a patch
            _, height, width, _ = layer.input.shape
            kh, kw, c_out, c_in = layer.kernel.shape
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
        else:
            continue
        total += 2 * height * width * kh * kw * c_in * c_out
    return total


def flops_info(forward, image_size):
    """The JSON fields of ``forward`` FLOPs per frame, as measured and scaled to 256 x 256."""
    return {"gflop_forward_per_frame": forward / 1e9,
            "gflop_forward_per_frame_at_256": forward / 1e9 * (256 / image_size) ** 2}


class PeakTracker:
    """The matrix-multiply rate (TensorFlow), sampled during a run: the best is the peak."""

    def __init__(self, n, precision="float32"):  # the dtype a mixed policy computes in
        self.n, self.dtype, self.samples, self.best = n, precision.removeprefix("mixed_"), {}, 0

    def sample(self, label, repeats=3):
        import tensorflow as tf

        a = tf.random.stateless_normal([self.n, self.n], seed=[1, 2], dtype=self.dtype)
        multiply = tf.function(lambda x: tf.reduce_sum(tf.linalg.matmul(x, x)))
        multiply(a).numpy()  # trace and warm up
        self.samples[label] = rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            multiply(a).numpy()  # the sum's fetch waits for the product, at no visible cost
            rates.append(round(2 * self.n**3 / (time.perf_counter() - t0) / 1e9, 1))
        self.best = max(self.best, *rates)
        return rates

    def as_dict(self):
        return {"method": f"tf.linalg.matmul, {self.n}^2 {self.dtype}, GFLOP/s = 2 n^3 / t",
                "best_gflop_per_s": self.best, "samples_gflop_per_s": self.samples}


def lus_dataset(n=300, seed=0):
    """The folder of the 960x128 LUS phantoms (the paper's 200 among them), written once."""
    from lungseg import data

    folder = CACHE / f"lus_{n}_seed{seed}"
    data.ensure_dataset("lus", folder, n=n, seed=seed)
    return folder


def load_lus_400(folder, image_size):
    """The paper's "400 LUS" (its 200 frames + mirror images) at ``image_size``."""
    from lungseg import data

    frames = data.load_frames(data.find_pairs(folder), (image_size, image_size))
    return data.select_lus_frames(frames, 400, flips=True)[0]


def build_model(name, image_size, precision="float32", clear_session=True):
    """V-Unet (random VGG16) or X-Unet under ``precision``, compiled with lungseg's Dice loss
    and the metrics the paper logged (training also counts empty and full predictions)."""
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
