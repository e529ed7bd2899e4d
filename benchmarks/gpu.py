"""GPU throughput of V-Unet and X-Unet under Keras' JAX backend, and the paper's cost on it.

For the lent GPU machine (JAX, no TensorFlow). On in-memory random frames (gray, 1 channel,
values 0-255, as the models take them) it times, for each model and precision (float32 and
``mixed_bfloat16``, the head staying float32):

* training: ``model.fit`` at batch 20 (the paper's), Adam + ``lungseg.dice_loss``;
* inference: ``model.predict_on_batch`` at batch 1 and 20 on frames already on the device
  (each call returns the masks to the host, so it includes that copy and the sync).

Warm-up steps (JIT compilation, autotuning) are timed apart and left out of the rates. Each
rate is the median of ``--repeats`` timed runs of ``--steps`` steps (batch 1: 5x the steps).
From the rates it derives the implied time of the paper's five experiments (training frames
x epochs at the training rate, validation frames x epochs at the batch-20 inference rate) and
sets it against the paper's roughly 15 GPU-hours.

    KERAS_BACKEND=jax python benchmarks/gpu.py --json gpu.json            # H100: < 5 minutes
    python benchmarks/gpu.py --image-size 64 --steps 2 --json /tmp/g.json  # CPU smoke run

The package is imported from this checkout (not installed on the device machine). The JSON is
rewritten after every measurement, so a run cut short still leaves what it measured.
"""

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

START = time.monotonic()

if os.environ.get("KERAS_BACKEND", "jax") != "jax":
    print(
        f"note: KERAS_BACKEND={os.environ['KERAS_BACKEND']} overridden: this benchmark runs on jax",
        file=sys.stderr,
    )
os.environ["KERAS_BACKEND"] = "jax"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, format_table, use_repo_checkout, write_json  # noqa: E402

use_repo_checkout()

PRECISIONS = ("float32", "mixed_bfloat16")
MODELS = ("vunet", "xunet")
PAPER_PARAMS = {"vunet": 25_854_657, "xunet": 31_031_745}
PAPER_GFLOP_256 = {"vunet": 102.0, "xunet": 96.0}
PAPER_GPU_HOURS = 15.0
PAPER_EPOCHS = 100
BATCH1_STEPS_FACTOR = 5

# (experiment, model, [(phase, times, train frames, validation frames)]); each phase runs
# PAPER_EPOCHS epochs. 400 LUS: 80/20 stage-1 split and 5-fold CV give 320 + 80 frames.
EXPERIMENTS = [
    (
        "V-Unet v1_1 (400 LUS)",
        "vunet",
        [("stage 1, encoder frozen", 1, 320, 80), ("stage 2, 5 folds", 5, 320, 80)],
    ),
    (
        "V-Unet v1_2 (200 LUS)",
        "vunet",
        [("stage 1, encoder frozen", 1, 160, 40), ("stage 2, 5 folds", 5, 160, 40)],
    ),
    (
        "X-Unet v3_3",
        "xunet",
        [("XPIE pre-training (batch 30)", 1, 8000, 2000), ("5 folds, 400 LUS", 5, 320, 80)],
    ),
    ("X-Unet frozen bottleneck", "xunet", [("5 folds, 400 LUS", 5, 320, 80)]),
    ("X-Unet 600 LUS", "xunet", [("5 folds, 600 LUS", 5, 480, 120)]),
]


def experiment_notes(args):
    return [
        f"every phase at the full-training rate measured at batch {args.batch}: stage 1 with "
        "the V-Unet encoder frozen and the frozen-bottleneck folds do less work (upper bound "
        "there); XPIE pre-training ran at batch 30",
        "validation: the stage's or fold's validation frames every epoch at the inference "
        "rate of the training batch (Keras validates at the training batch size)",
    ]


# The paper's own timings: seconds per epoch, frames per epoch (train + validation).
PAPER_EPOCHS_TIMED = [
    ("V-Unet epoch, Tesla K80", "vunet", 34.0, 320, 80),
    ("X-Unet XPIE epoch, GTX 1080 Ti", "xunet", 260.0, 8000, 2000),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="write all numbers to FILE (JSON)")
    parser.add_argument(
        "--steps", type=_positive, default=25, help="timed steps per run (default 25)"
    )
    parser.add_argument(
        "--repeats",
        type=_positive,
        help="timed runs per rate, the median counts (default 3 on a GPU, 1 without)",
    )
    parser.add_argument(
        "--warmup",
        type=_positive,
        help="untimed warm-up steps (default 2 on a GPU, 1 without)",
    )
    parser.add_argument(
        "--image-size", type=_image_size, default=256, help="frame side (default 256)"
    )
    parser.add_argument("--batch", type=_positive, default=20, help="training batch (default 20)")
    parser.add_argument(
        "--infer-batches", type=_int_list, default=[1, 20], help="inference batches (default 1,20)"
    )
    parser.add_argument(
        "--models", type=_choices(MODELS), default=list(MODELS), help="vunet,xunet (default both)"
    )
    parser.add_argument(
        "--precisions",
        type=_choices(PRECISIONS),
        default=list(PRECISIONS),
        help="float32,mixed_bfloat16 (default both)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=280.0,
        help="seconds the whole run should stay under: a model is skipped when the slowest "
        "one so far would overrun it (default 280)",
    )
    parser.add_argument(
        "--require-gpu", action="store_true", help="exit with status 2 if JAX sees no GPU"
    )
    return parser.parse_args(argv)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _image_size(text):
    value = int(text)
    if value < 16 or value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16, got {value}")
    return value


def _int_list(text):
    values = [_positive(part) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one batch size")
    return values


def _choices(allowed):
    def parse(text):
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(allowed)}; got {text!r}")
        return [v for v in allowed if v in values]

    return parse


def say(*parts):
    print(*parts, flush=True)


def environment():
    import jax
    import jaxlib
    import keras
    import numpy

    import lungseg

    devices = jax.devices()
    gpus = [d for d in devices if d.platform == "gpu"]
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "keras_backend": keras.backend.backend(),
        "jax_backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
        "gpu": bool(gpus),
        "device_kind": devices[0].device_kind,
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "lungseg_file": lungseg.__file__,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def build_model(name, image_size, precision):
    import keras

    import lungseg

    keras.backend.clear_session()  # also resets the dtype policy: set it afterwards
    keras.mixed_precision.set_global_policy(precision)
    shape = (image_size, image_size, 1)
    if name == "vunet":
        model = lungseg.build_vunet(input_shape=shape, encoder_weights=None)
    else:
        model = lungseg.build_xunet(input_shape=shape)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-5), loss=lungseg.dice_loss)
    return model


def forward_flops(model):
    """Multiply-adds x 2 of the convolutions for one frame (bias, ReLU, pooling left out)."""
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, height, width, _ = layer.input.shape
            kh, kw, c_out, c_in = layer.kernel.shape
            total += 2 * height * width * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
            total += 2 * height * width * kh * kw * c_in * c_out
    return total


def frames(rng, count, size):
    """Gray frames 0-255 (float32, as a loader hands them over) and sparse binary masks."""
    import numpy as np

    x = rng.integers(0, 256, size=(count, size, size, 1)).astype(np.float32)
    y = (rng.random((count, size, size, 1)) < 0.05).astype(np.float32)
    return x, y


def _block(model):
    import jax

    jax.block_until_ready([v.value for v in model.trainable_variables])


def time_training(model, x, y, args):
    """Warm-up seconds, timed seconds per run and the last loss, through ``model.fit``."""
    batch = args.batch
    fit = dict(batch_size=batch, epochs=1, shuffle=False, verbose=0)
    t0 = time.perf_counter()
    model.fit(x[: args.warmup * batch], y[: args.warmup * batch], **fit)
    _block(model)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        history = model.fit(x, y, **fit)
        _block(model)
        times.append(time.perf_counter() - t0)
    return warmup, times, float(history.history["loss"][-1])


def time_inference(model, x, batch, steps, args):
    """Warm-up seconds, timed seconds per run, and a check of the last output."""
    import jax
    import numpy as np

    inputs = [jax.device_put(x[i * batch : (i + 1) * batch]) for i in range(min(4, steps))]
    jax.block_until_ready(inputs)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        out = model.predict_on_batch(inputs[i % len(inputs)])
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            out = model.predict_on_batch(inputs[i % len(inputs)])
        times.append(time.perf_counter() - t0)
    out = np.asarray(out)
    ok = (
        out.shape == (batch, x.shape[1], x.shape[2], 1)
        and bool(np.isfinite(out).all())
        and float(out.min()) >= 0.0
        and float(out.max()) <= 1.0
    )
    return warmup, times, {"dtype": str(out.dtype), "shape": list(out.shape), "valid": ok}


def rate_entry(model_name, precision, phase, batch, steps, warmup, times, flops_per_frame):
    frame_count = batch * steps
    median = statistics.median(times)
    fps = frame_count / median
    return {
        "model": model_name,
        "precision": precision,
        "phase": phase,
        "batch": batch,
        "steps": steps,
        "warmup_s": round(warmup, 3),
        "times_s": [round(t, 4) for t in times],
        "frames_per_s": fps,
        "frames_per_s_min": frame_count / max(times),
        "frames_per_s_max": frame_count / min(times),
        "spread": (max(times) - min(times)) / median,
        "ms_per_step": 1000 * median / steps,
        "approx_tflop_per_s": fps * flops_per_frame / 1e12,
    }


def measure(args, results, save):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    most = max([args.batch] + args.infer_batches)
    count = max(args.batch * args.steps, most * min(4, args.steps))
    x, y = frames(rng, count, args.image_size)
    train_x, train_y = x[: args.batch * args.steps], y[: args.batch * args.steps]
    if args.warmup > args.steps:
        train_x = np.concatenate([train_x] * math.ceil(args.warmup / args.steps))
        train_y = np.concatenate([train_y] * math.ceil(args.warmup / args.steps))

    block_seconds = []  # how long each model + precision took, to foresee the next
    for precision in args.precisions:
        for name in args.models:
            label = f"{name} {precision}"
            elapsed = time.monotonic() - START
            expected = max(block_seconds, default=0.0)
            if elapsed + expected > args.budget:
                reason = (
                    f"{elapsed:.0f} s elapsed + {expected:.0f} s expected > --budget "
                    f"{args.budget:.0f} s"
                )
                results["skipped"].append(f"{label}: {reason}")
                say(f"skip {label}: {reason}")
                continue
            t0 = time.perf_counter()
            model = build_model(name, args.image_size, precision)
            info = {
                "model": name,
                "precision": precision,
                "build_s": round(time.perf_counter() - t0, 2),
                "params": int(model.count_params()),
                "paper_params": PAPER_PARAMS[name],
                "gflop_forward_per_frame": forward_flops(model) / 1e9,
                "compute_dtype": model.get_layer("decoder1_conv1").compute_dtype,
                "head_dtype": model.get_layer("mask").compute_dtype,
                "output_dtype": str(model.outputs[0].dtype),
            }
            info["gflop_forward_per_frame_at_256"] = (
                info["gflop_forward_per_frame"] * (256 / args.image_size) ** 2
            )
            results["models"].append(info)
            fwd = info["gflop_forward_per_frame"] * 1e9
            say(
                f"{label}: {info['params']:,} parameters, "
                f"{info['gflop_forward_per_frame']:.1f} GFLOP/frame forward, "
                f"compute {info['compute_dtype']}, head {info['head_dtype']}"
            )

            warmup, times, loss = time_training(model, train_x, train_y, args)
            entry = rate_entry(
                name,
                precision,
                "train",
                args.batch,
                len(train_x) // args.batch,
                warmup,
                times,
                3 * fwd,
            )
            entry["final_loss"] = loss
            entry["valid"] = math.isfinite(loss)
            results["measurements"].append(entry)
            save()
            say(_progress(entry))

            for batch in args.infer_batches:
                if time.monotonic() - START > args.budget:
                    results["skipped"].append(f"{label} infer b{batch}: --budget reached")
                    say(f"skip {label} infer b{batch}: --budget reached")
                    continue
                steps = args.steps * (BATCH1_STEPS_FACTOR if batch == 1 else 1)
                warmup, times, check = time_inference(model, x, batch, steps, args)
                entry = rate_entry(name, precision, "infer", batch, steps, warmup, times, fwd)
                entry["output"] = check
                entry["valid"] = check["valid"]
                results["measurements"].append(entry)
                save()
                say(_progress(entry))

            del model
            keras.backend.clear_session()
            gc.collect()
            block_seconds.append(time.perf_counter() - t0)
    keras.mixed_precision.set_global_policy("float32")


def _progress(entry):
    spread = f"{100 * entry['spread']:.0f}%" if len(entry["times_s"]) > 1 else "- (1 run)"
    text = (
        f"  {entry['phase']:5s} b{entry['batch']:<3d} {_fmt(entry['frames_per_s']):>7s} frames/s "
        f"({_fmt(entry['ms_per_step'])} ms/step, spread {spread}, "
        f"~{_fmt(entry['approx_tflop_per_s'])} TFLOP/s, warm-up {_fmt(entry['warmup_s'])} s)"
    )
    if not entry["valid"]:
        text += "  INVALID OUTPUT (NaN or out of range)"
    return text


def _rate(results, model, precision, phase, batch):
    for entry in results["measurements"]:
        if (entry["model"], entry["precision"], entry["phase"], entry["batch"]) == (
            model,
            precision,
            phase,
            batch,
        ):
            return entry["frames_per_s"]
    return None


def _validation_batch(results, args):
    """Batch whose inference rate stands for validation: the training batch if measured."""
    measured = sorted({e["batch"] for e in results["measurements"] if e["phase"] == "infer"})
    if args.batch in measured:
        return args.batch
    return measured[-1] if measured else None


def implied_times(results, args):
    val_batch = _validation_batch(results, args)
    experiments = []
    for name, model, phases in EXPERIMENTS:
        train_frames = sum(times * n * PAPER_EPOCHS for _, times, n, _ in phases)
        val_frames = sum(times * n * PAPER_EPOCHS for _, times, _, n in phases)
        row = {
            "experiment": name,
            "model": model,
            "phases": [
                {"phase": p, "times": t, "train_frames": n, "val_frames": v, "epochs": PAPER_EPOCHS}
                for p, t, n, v in phases
            ],
            "train_frames_total": train_frames,
            "val_frames_total": val_frames,
            "hours": {},
        }
        for precision in args.precisions:
            train = _rate(results, model, precision, "train", args.batch)
            infer = _rate(results, model, precision, "infer", val_batch) if val_batch else None
            row["hours"][precision] = (
                (train_frames / train + val_frames / infer) / 3600 if train and infer else None
            )
        experiments.append(row)
    totals = {}
    for precision in args.precisions:
        hours = [row["hours"][precision] for row in experiments]
        total = sum(hours) if all(h is not None for h in hours) else None
        totals[precision] = {
            "hours": total,
            "paper_gpu_hours": PAPER_GPU_HOURS,
            "speedup_vs_paper": PAPER_GPU_HOURS / total if total else None,
        }
    epochs = []
    for label, model, seconds, n_train, n_val in PAPER_EPOCHS_TIMED:
        row = {"epoch": label, "paper_s": seconds, "train_frames": n_train, "val_frames": n_val}
        for precision in args.precisions:
            train = _rate(results, model, precision, "train", args.batch)
            infer = _rate(results, model, precision, "infer", val_batch) if val_batch else None
            ours = n_train / train + n_val / infer if train and infer else None
            row[precision] = {"s": ours, "speedup": seconds / ours if ours else None}
        epochs.append(row)
    return {
        "image_size": args.image_size,
        "comparable_to_paper": args.image_size == 256,
        "validation_rate_batch": val_batch,
        "notes": experiment_notes(args),
        "experiments": experiments,
        "total": totals,
        "paper_epochs": epochs,
    }


def _fmt(value, suffix=""):
    """Three significant digits at most below 100, whole numbers above."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}{suffix}"
    if abs(value) >= 10:
        return f"{value:.1f}{suffix}"
    return f"{value:.3g}{suffix}"


def report(results, args):
    say("")
    say(
        f"== throughput, {args.image_size}x{args.image_size} gray frames, "
        f"{results['environment']['device_kind']} =="
    )
    rows = []
    for e in results["measurements"]:
        rows.append(
            [
                e["model"],
                e["precision"],
                e["phase"],
                e["batch"],
                _fmt(e["frames_per_s"]),
                f"{100 * e['spread']:.0f}%" if len(e["times_s"]) > 1 else "-",
                _fmt(e["ms_per_step"]),
                _fmt(e["approx_tflop_per_s"]),
                _fmt(e["warmup_s"]),
                "ok" if e["valid"] else "BAD",
            ]
        )
    say(
        format_table(
            [
                "model",
                "precision",
                "phase",
                "batch",
                "frames/s",
                "spread",
                "ms/step",
                "~TFLOP/s",
                "warm-up s",
                "out",
            ],
            rows,
        )
    )
    speedups = []
    for model in args.models:
        train = {p: _rate(results, model, p, "train", args.batch) for p in args.precisions}
        if train.get("float32") and train.get("mixed_bfloat16"):
            speedups.append(f"{model} {train['mixed_bfloat16'] / train['float32']:.2f}x")
    if speedups:
        say("mixed_bfloat16 over float32, training: " + ", ".join(speedups))

    implied = results["implied"]
    say("")
    say(f"== the paper's five experiments ({PAPER_EPOCHS} epochs each phase), implied hours ==")
    if not implied["comparable_to_paper"]:
        say(
            f"(measured at {args.image_size}x{args.image_size}, not 256x256: NOT comparable "
            "with the paper)"
        )
    rows = []
    for row in implied["experiments"]:
        rows.append(
            [row["experiment"], f"{row['train_frames_total']:,}", f"{row['val_frames_total']:,}"]
            + [_fmt(row["hours"][p]) for p in args.precisions]
        )
    total_row = [
        "total",
        f"{sum(r['train_frames_total'] for r in implied['experiments']):,}",
        f"{sum(r['val_frames_total'] for r in implied['experiments']):,}",
    ]
    total_row += [_fmt(implied["total"][p]["hours"]) for p in args.precisions]
    rows.append(total_row)
    rows.append(
        ["paper (GPU-hours, about)", "", ""] + [_fmt(PAPER_GPU_HOURS)] * len(args.precisions)
    )
    rows.append(
        ["speed-up: paper h / ours", "", ""]
        + [_fmt(implied["total"][p]["speedup_vs_paper"], "x") for p in args.precisions]
    )
    say(
        format_table(
            ["experiment", "train frames", "val frames"] + [f"h {p}" for p in args.precisions], rows
        )
    )
    for note in implied["notes"]:
        say(f"  note: {note}")

    rows = []
    for row in implied["paper_epochs"]:
        cells = [row["epoch"], f"{row['train_frames']}+{row['val_frames']}", _fmt(row["paper_s"])]
        for p in args.precisions:
            cells += [_fmt(row[p]["s"]), _fmt(row[p]["speedup"], "x")]
        rows.append(cells)
    headers = ["paper's timed epoch", "frames", "paper s"]
    for p in args.precisions:
        headers += [f"s {p}", "ratio"]
    say("")
    say(format_table(headers, rows))
    if results["skipped"]:
        say("skipped: " + "; ".join(results["skipped"]))


def main(argv=None):
    args = parse_args(argv)
    env = environment()
    if args.repeats is None:
        args.repeats = 3 if env["gpu"] else 1
    if args.warmup is None:
        args.warmup = 2 if env["gpu"] else 1
    say(
        f"lungseg GPU benchmark: keras {env['keras']} on {env['keras_backend']}, "
        f"jax {env['jax']} (jaxlib {env['jaxlib']}), python {env['python']}, "
        f"numpy {env['numpy']}"
    )
    say(f"jax backend: {env['jax_backend']}; devices: {', '.join(env['devices'])}")
    say(f"lungseg from {env['lungseg_file']}")
    say(
        f"float32 rows: jax_default_matmul_precision={env['jax_default_matmul_precision']}; "
        "by JAX's default, float32 convolutions on Ampere/Hopper run as TF32 on the tensor cores "
        "(JAX_DEFAULT_MATMUL_PRECISION=highest for true float32, as the paper's K80/1080 Ti did)"
    )
    if not env["gpu"]:
        banner = (
            "WARNING: JAX sees NO GPU: running on the CPU, the rates below are not GPU rates. "
            "Use small settings here (--image-size 64 --steps 2)."
        )
        say("!" * 78 + "\n" + banner + "\n" + "!" * 78)
        if args.require_gpu:
            return 2
    if env["tensorflow_imported"]:
        say("WARNING: tensorflow was imported by keras or lungseg under the jax backend")

    results = {
        "benchmark": "gpu",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {
            "image_size": args.image_size,
            "batch": args.batch,
            "infer_batches": args.infer_batches,
            "steps": args.steps,
            "batch1_steps": args.steps * BATCH1_STEPS_FACTOR,
            "repeats": args.repeats,
            "warmup_steps": args.warmup,
            "models": args.models,
            "precisions": args.precisions,
            "optimizer": "Adam(1e-5)",
            "loss": "lungseg.dice_loss",
            "input": "gray 1-channel float32 frames, integer values 0-255; masks 5% ones",
            "training": "model.fit on host arrays (Keras copies a batch ahead to the device)",
            "inference": "model.predict_on_batch on device arrays, masks returned to host",
            "rate": "frames / median of the timed runs; warm-up excluded",
            "float32": "JAX default precision: TF32 tensor-core convolutions on Ampere/Hopper "
            "unless JAX_DEFAULT_MATMUL_PRECISION=highest",
        },
        "environment": env,
        "repo": str(REPO_ROOT),
        "models": [],
        "measurements": [],
        "skipped": [],
        "implied": None,
    }

    def save():
        results["elapsed_s"] = round(time.monotonic() - START, 1)
        results["implied"] = implied_times(results, args)
        if args.json:
            write_json(args.json, results)

    measure(args, results, save)
    results["environment"]["tensorflow_imported"] = "tensorflow" in sys.modules
    save()
    report(results, args)
    say(
        f"\ntotal {results['elapsed_s']:.0f} s"
        + (f"; JSON written to {args.json}" if args.json else "")
    )
    if results["environment"]["tensorflow_imported"]:
        say("WARNING: tensorflow ended up imported during the run")
    bad = [e for e in results["measurements"] if not e["valid"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
