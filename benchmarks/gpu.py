"""GPU throughput of V-Unet and X-Unet under Keras' JAX backend, and the paper's cost on it.

For the lent GPU machine (JAX, no TensorFlow). On in-memory random gray frames (values
0-255, as the models take them) it times, per model and precision (float32, and
``mixed_bfloat16`` with the head in float32): training (``model.fit`` at batch 20, compiled
as lungseg.training compiles it) and inference (``predict_on_batch`` at batch 1 and 20 of
frames already on the device, masks returned to the host). Warm-up steps (JIT compilation,
autotuning) are timed apart. Each rate is the median of ``--repeats`` timed runs of
``--steps`` steps (batch 1: 5x the steps), with the spread. From the rates it derives the
implied hours of the paper's five experiments, against the paper's roughly 15 GPU-hours.

    KERAS_BACKEND=jax python benchmarks/gpu.py --json gpu.json --require-gpu   # about 5 min
    KERAS_BACKEND=jax python benchmarks/gpu.py --image-size 64 --steps 2       # CPU smoke run

The JSON is rewritten after every measurement: a run cut short keeps what it measured.
"""

import gc
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

START = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("jax")

PRECISIONS = ("float32", "mixed_bfloat16")
PAPER_GPU_HOURS, PAPER_EPOCHS, BATCH1_STEPS_FACTOR = 15.0, 100, 5
# (experiment, model, [(phase, times, train frames, validation frames)]), each phase
# PAPER_EPOCHS epochs; 400 LUS: the 80/20 stage-1 split and 5-fold CV give 320 + 80 frames.
EXPERIMENTS = [
    ("V-Unet v1_1 (400 LUS)", "vunet", [("stage 1", 1, 320, 80), ("5 folds", 5, 320, 80)]),
    ("V-Unet v1_2 (200 LUS)", "vunet", [("stage 1", 1, 160, 40), ("5 folds", 5, 160, 40)]),
    ("X-Unet v3_3", "xunet", [("XPIE pre-training", 1, 8000, 2000), ("5 folds", 5, 320, 80)]),
    ("X-Unet frozen bottleneck", "xunet", [("5 folds", 5, 320, 80)]),
    ("X-Unet 600 LUS", "xunet", [("5 folds", 5, 480, 120)]),
]
NOTE = ("every phase at the full training rate (frozen-encoder stage 1 and frozen-bottleneck "
        "folds do less work: an upper bound there; XPIE ran at batch 30); validation at the "
        "inference rate of the training batch")


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 256, models=True, cache=False)
    add = parser.add_argument
    add("--steps", type=common.positive_int, default=25, help="timed steps per run (default 25)")
    add("--repeats", type=common.positive_int,
        help="timed runs per rate, the median counts (default 3 on a GPU, 1 without)")
    add("--warmup", type=common.positive_int,
        help="untimed warm-up steps (default 2 on a GPU, 1 without)")
    add("--infer-batches", type=lambda t: [common.positive_int(v) for v in t.split(",")],
        default=[1, 20], help="inference batch sizes (default 1,20)")
    add("--precisions", type=common.choice_list(PRECISIONS), default=list(PRECISIONS),
        help="float32,mixed_bfloat16 (default both)")
    add("--budget", type=float, default=330.0,
        help="seconds the run should stay under: a model is skipped when the slowest so far "
        "would overrun it (default 330)")
    add("--require-gpu", action="store_true", help="exit with status 2 if JAX sees no GPU")
    return parser.parse_args(argv)


def environment():
    import jax
    import keras
    import numpy

    import lungseg

    devices = jax.devices()
    return {
        "python": sys.version.split()[0], "jax": jax.__version__, "keras": keras.__version__,
        "numpy": numpy.__version__, "keras_backend": keras.backend.backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
        "gpu": any(d.platform == "gpu" for d in devices),
        "device_kind": devices[0].device_kind,
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "lungseg_file": lungseg.__file__,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def time_training(model, x, y, args):
    """Warm-up seconds, the timed ``model.fit`` epochs' seconds and the last loss."""
    import jax

    fit = dict(batch_size=args.batch_size, epochs=1, shuffle=False, verbose=0)

    def run(n):
        t0 = time.perf_counter()
        history = model.fit(x[:n], y[:n], **fit)
        jax.block_until_ready([v.value for v in model.trainable_variables])
        return time.perf_counter() - t0, history.history["loss"][-1]

    warmup, _ = run(args.warmup * args.batch_size)
    times = [run(args.steps * args.batch_size) for _ in range(args.repeats)]
    return warmup, [t for t, _ in times], float(times[-1][1])


def time_inference(model, x, batch, steps, args):
    """Warm-up seconds, timed seconds per run, and whether the last masks are valid."""
    import jax
    import numpy as np

    inputs = [jax.device_put(x[i * batch:(i + 1) * batch]) for i in range(4)]
    jax.block_until_ready(inputs)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        np.asarray(model.predict_on_batch(inputs[i % 4]))
    warmup, times = time.perf_counter() - t0, []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            out = model.predict_on_batch(inputs[i % 4])
        out = np.asarray(out)
        times.append(time.perf_counter() - t0)
    valid = out.shape == (batch, *x.shape[1:]) and bool(
        np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1)
    return warmup, times, valid


def record(results, save, model, precision, phase, batch, steps, warmup, times, flops, valid,
           **extra):
    """Add one rate (the median run's, with the range over runs) to the results and say it."""
    fps = [batch * steps / t for t in times]
    mid = batch * steps / statistics.median(times)
    e = {"model": model, "precision": precision, "phase": phase, "batch": batch, "steps": steps,
         "warmup_s": round(warmup, 3), "times_s": [round(t, 4) for t in times],
         "frames_per_s": mid, "frames_per_s_min": min(fps), "frames_per_s_max": max(fps),
         "spread": (max(fps) - min(fps)) / mid, "ms_per_step": 1000 * batch / mid,
         "approx_tflop_per_s": mid * flops / 1e12, "valid": valid, **extra}
    results["measurements"].append(e)
    save()
    spread = f"{100 * e['spread']:.0f}%" if len(times) > 1 else "- (1 run)"
    f = common.fmt
    common.say(f"  {phase:5s} b{batch:<3d} {f(mid):>7s} frames/s ({f(e['ms_per_step'])} ms/step, "
               f"spread {spread}, ~{f(e['approx_tflop_per_s'])} TFLOP/s, warm-up {f(warmup)} s)"
               + ("" if valid else "  INVALID OUTPUT (NaN or out of range)"))


def measure(args, results, save):
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    count = max(args.steps, args.warmup, 4) * max(args.batch_size, *args.infer_batches)
    x = rng.integers(0, 256, (count, args.image_size, args.image_size, 1)).astype("float32")
    y = (rng.random(x.shape) < 0.05).astype("float32")
    blocks = []  # seconds per model and precision, to foresee the next
    for precision in args.precisions:
        for name in args.models:
            label, elapsed = f"{name} {precision}", time.monotonic() - START
            if elapsed + max(blocks, default=0) > args.budget:
                results["skipped"].append(f"{label}: {elapsed:.0f} s elapsed + "
                                          f"{max(blocks):.0f} s expected > --budget")
                common.say(f"skip {results['skipped'][-1]}")
                continue
            t0 = time.perf_counter()
            model = common.build_model(name, args.image_size, precision)
            fwd = common.forward_flops(model)
            info = {"model": name, "precision": precision, "params": int(model.count_params()),
                    "build_s": round(time.perf_counter() - t0, 2),
                    "gflop_forward_per_frame": fwd / 1e9,
                    "gflop_forward_per_frame_at_256": fwd / 1e9 * (256 / args.image_size) ** 2,
                    "compute_dtype": model.get_layer("decoder1_conv1").compute_dtype,
                    "head_dtype": model.get_layer("mask").compute_dtype}
            results["models"].append(info)
            common.say(f"{label}: {info['params']:,} parameters, {fwd / 1e9:.1f} GFLOP/frame "
                       f"forward, compute {info['compute_dtype']}, head {info['head_dtype']}")
            warmup, times, loss = time_training(model, x, y, args)
            record(results, save, name, precision, "train", args.batch_size, args.steps, warmup,
                   times, common.TRAIN_FLOPS_FACTOR * fwd, bool(np.isfinite(loss)), final_loss=loss)
            for batch in args.infer_batches:
                if time.monotonic() - START > args.budget:
                    results["skipped"].append(f"{label} infer b{batch}: --budget reached")
                    continue
                steps = args.steps * (BATCH1_STEPS_FACTOR if batch == 1 else 1)
                warmup, times, valid = time_inference(model, x, batch, steps, args)
                record(results, save, name, precision, "infer", batch, steps, warmup, times, fwd,
                       valid)
            model = None
            keras.backend.clear_session()
            gc.collect()
            blocks.append(time.perf_counter() - t0)
    keras.mixed_precision.set_global_policy("float32")


def rate(results, model, precision, phase, batch):
    return next((e["frames_per_s"] for e in results["measurements"]
                 if (e["model"], e["precision"], e["phase"], e["batch"])
                 == (model, precision, phase, batch)), None)


def implied_times(results, args):
    """Hours of the paper's experiments at our rates: training frames at the training rate,
    validation frames at the inference rate."""
    infer = sorted({e["batch"] for e in results["measurements"] if e["phase"] == "infer"})
    val_batch = args.batch_size if args.batch_size in infer else (infer or [None])[-1]

    def seconds(model, precision, n_train, n_val):
        train = rate(results, model, precision, "train", args.batch_size)
        val = rate(results, model, precision, "infer", val_batch)
        return n_train / train + n_val / val if train and val else None

    experiments, total = [], {}
    for name, model, phases in EXPERIMENTS:
        n_train, n_val = (sum(t * n[i] * PAPER_EPOCHS for _, t, *n in phases) for i in (0, 1))
        hours = {p: seconds(model, p, n_train, n_val) for p in args.precisions}
        experiments.append({"experiment": name, "model": model, "train_frames_total": n_train,
                            "val_frames_total": n_val,
                            "hours": {p: s and s / 3600 for p, s in hours.items()}})
    for p in args.precisions:
        hours = [row["hours"][p] for row in experiments]
        h = None if None in hours else sum(hours)
        total[p] = {"hours": h, "paper_gpu_hours": PAPER_GPU_HOURS,
                    "speedup_vs_paper": h and PAPER_GPU_HOURS / h}
    return {"image_size": args.image_size, "comparable_to_paper": args.image_size == 256,
            "validation_rate_batch": val_batch, "note": NOTE, "experiments": experiments,
            "total": total}


def report(results, args):
    f, ps, implied = common.fmt, args.precisions, results["implied"]
    for model in args.models:
        r = {p: rate(results, model, p, "train", args.batch_size) for p in PRECISIONS}
        if all(r.values()):
            common.say(f"{model}: mixed_bfloat16 trains {r['mixed_bfloat16'] / r['float32']:.2f}x"
                       " as fast as float32")
    common.say(f"\n== the paper's five experiments ({PAPER_EPOCHS} epochs a phase), implied "
               "hours ==" + ("" if implied["comparable_to_paper"] else " (NOT at 256x256)"))
    rows = [[r["experiment"], f"{r['train_frames_total']:,}", f"{r['val_frames_total']:,}"]
            + [f(r["hours"][p]) for p in ps] for r in implied["experiments"]]
    rows += [["total (paper: about 15 GPU-hours)", "", ""]
             + [f(implied["total"][p]["hours"]) for p in ps],
             ["paper / ours", "", ""] + [f(implied["total"][p]["speedup_vs_paper"], "x") for p in ps]]
    common.say(common.format_table(["experiment", "train frames", "val frames"]
                                   + [f"h {p}" for p in ps], rows))
    common.say(f"  note: {NOTE}")
    if results["skipped"]:
        common.say("skipped: " + "; ".join(results["skipped"]))


def main(argv=None):
    args = parse_args(argv)
    env = environment()
    args.repeats = args.repeats or (3 if env["gpu"] else 1)
    args.warmup = args.warmup or (2 if env["gpu"] else 1)
    common.say(f"keras {env['keras']} on {env['keras_backend']}, jax {env['jax']}, python "
               f"{env['python']}; devices: {', '.join(env['devices'])}; lungseg from "
               f"{env['lungseg_file']}")
    common.say(f"float32 rows: jax_default_matmul_precision={env['jax_default_matmul_precision']}"
               " (JAX's default runs float32 convolutions as TF32 on Ampere/Hopper tensor cores;"
               " JAX_DEFAULT_MATMUL_PRECISION=highest for true float32, as the paper's GPUs)")
    if not env["gpu"]:
        common.say("WARNING: JAX sees NO GPU: these are CPU rates (use --image-size 64 --steps 2)")
        if args.require_gpu:
            return 2
    results = {
        "benchmark": "gpu", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": {
            "image_size": args.image_size, "batch": args.batch_size,
            "infer_batches": args.infer_batches, "steps": args.steps,
            "batch1_steps": args.steps * BATCH1_STEPS_FACTOR, "repeats": args.repeats,
            "warmup_steps": args.warmup, "models": args.models, "precisions": args.precisions,
            "compiled": "Adam(1e-5), lungseg.dice_loss; metrics dice_coef, iou, binary_accuracy",
            "input": "gray 1-channel float32 frames, integer values 0-255; masks 5% ones",
            "training": "model.fit on host arrays (Keras copies each batch to the device)",
            "inference": "model.predict_on_batch on device arrays, masks returned to the host",
            "rate": "frames / median of the timed runs; warm-up excluded",
        },
        "environment": env, "models": [], "measurements": [], "skipped": [], "implied": None,
    }

    def save():
        results["elapsed_s"] = round(time.monotonic() - START, 1)
        results["implied"] = implied_times(results, args)
        if args.json:
            common.write_json(args.json, results)

    measure(args, results, save)
    env["tensorflow_imported"] = "tensorflow" in sys.modules
    save()
    report(results, args)
    common.say(f"\ntotal {results['elapsed_s']:.0f} s" + (f"; JSON in {args.json}" if args.json else ""))
    if env["tensorflow_imported"]:
        common.say("WARNING: tensorflow was imported during the run")
    return 0 if all(e["valid"] for e in results["measurements"]) else 1


if __name__ == "__main__":
    sys.exit(main())
