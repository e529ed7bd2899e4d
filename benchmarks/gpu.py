"""GPU throughput of V-Unet and X-Unet under Keras' JAX backend, and the paper's cost on it.

For a GPU machine with JAX and no TensorFlow: per model and precision (float32; mixed_bfloat16,
head in float32), training (``model.fit``) and inference (``predict_on_batch`` at batch 1 and
20) on random frames, and the implied hours of the paper's five experiments. The JSON is
rewritten after every measurement. Figures in docs/performance.md ("On a GPU").

    KERAS_BACKEND=jax python benchmarks/gpu.py --require-gpu --json gpu.json
    KERAS_BACKEND=jax python benchmarks/gpu.py --image-size 64 --steps 2 --repeats 1  # on a CPU
"""

import functools
import gc
import math
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


def timed_runs(run, steps, args):
    """Seconds of ``run(--warmup)`` and of ``--repeats`` timed ``run(steps)``; the last result."""
    t0 = time.perf_counter()
    run(args.warmup)
    warmup, times = time.perf_counter() - t0, []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = run(steps)
        times.append(time.perf_counter() - t0)
    return warmup, times, result


def record(results, save, key, batch, steps, timing, flops, valid, **extra):
    """Add one rate (the median run's, with the range over runs) to the results, save and say it."""
    (warmup, times, _), f = timing, common.fmt
    fps = [batch * steps / t for t in times]
    mid = batch * steps / statistics.median(times)
    e = {**key, "batch": batch, "steps": steps, "warmup_s": round(warmup, 3),
         "times_s": [round(t, 4) for t in times], "frames_per_s": mid,
         "frames_per_s_min": min(fps), "frames_per_s_max": max(fps),
         "spread": (max(fps) - min(fps)) / mid, "ms_per_step": 1000 * batch / mid,
         "approx_tflop_per_s": mid * flops / 1e12, "valid": valid, **extra}
    results["measurements"].append(e)
    save()
    spread = f"{100 * e['spread']:.0f}%" if len(times) > 1 else "- (1 run)"
    common.say(f"  {key['phase']:5s} b{batch:<3d} {f(mid):>7s} frames/s ({f(e['ms_per_step'])} "
               f"ms/step, spread {spread}, ~{f(e['approx_tflop_per_s'])} TFLOP/s, warm-up "
               f"{f(warmup)} s)" + ("" if valid else "  INVALID OUTPUT (NaN or out of range)"))


def measure(args, results, save):
    import jax
    import keras
    import numpy as np

    rng, batch = np.random.default_rng(0), args.batch_size
    count = max(args.steps, args.warmup, 4) * max(batch, *args.infer_batches)
    x = rng.integers(0, 256, (count, args.image_size, args.image_size, 1)).astype("float32")
    y = (rng.random(x.shape) < 0.05).astype("float32")
    for precision, name in ((p, n) for p in args.precisions for n in args.models):
        model = common.build_model(name, args.image_size, precision)
        fwd, key = common.forward_flops(model), {"model": name, "precision": precision}
        info = key | common.flops_info(fwd, args.image_size) | {
            "params": int(model.count_params()),
            "compute_dtype": model.get_layer("decoder1_conv1").compute_dtype,
            "head_dtype": model.get_layer("mask").compute_dtype}
        results["models"].append(info)
        common.say(f"{name} {precision}: {info['params']:,} parameters, {fwd / 1e9:.1f} GFLOP/"
                   f"frame forward, compute {info['compute_dtype']}, head {info['head_dtype']}")

        def fit(steps):  # on host arrays: Keras copies each batch to the device
            n = steps * batch
            history = model.fit(x[:n], y[:n], batch_size=batch, epochs=1, shuffle=False, verbose=0)
            jax.block_until_ready([v.value for v in model.trainable_variables])
            return float(history.history["loss"][-1])

        def predict(inputs, steps):  # on device arrays, the masks copied back to the host
            for i in range(steps):
                out = model.predict_on_batch(inputs[i % len(inputs)])
            return np.asarray(out)

        def valid_masks(out, inputs):
            return out.shape == (len(inputs[0]), *x.shape[1:]) and bool(
                np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1)

        timing = timed_runs(fit, args.steps, args)
        record(results, save, key | {"phase": "train"}, batch, args.steps, timing,
               common.TRAIN_FLOPS_FACTOR * fwd, math.isfinite(timing[2]), final_loss=timing[2])
        for size in args.infer_batches:
            inputs = jax.block_until_ready(
                [jax.device_put(x[i * size:(i + 1) * size]) for i in range(4)])
            steps = args.steps * (BATCH1_STEPS_FACTOR if size == 1 else 1)
            timing = timed_runs(functools.partial(predict, inputs), steps, args)
            record(results, save, key | {"phase": "infer"}, size, steps, timing, fwd,
                   valid_masks(timing[2], inputs))
        model = fit = predict = None
        keras.backend.clear_session()
        gc.collect()
    keras.mixed_precision.set_global_policy("float32")


def rates(results):
    return {(e["model"], e["precision"], e["phase"], e["batch"]): e["frames_per_s"]
            for e in results["measurements"]}


def implied_times(results, args):
    """Hours of the paper's experiments: training and validation frames at our rates."""
    infer = sorted({e["batch"] for e in results["measurements"] if e["phase"] == "infer"})
    val_batch = args.batch_size if args.batch_size in infer else (infer or [None])[-1]
    rate = rates(results)

    def hours(model, precision, n_train, n_val):
        train = rate.get((model, precision, "train", args.batch_size))
        val = rate.get((model, precision, "infer", val_batch))
        return (n_train / train + n_val / val) / 3600 if train and val else None

    experiments, total = [], {}
    for name, model, phases in EXPERIMENTS:
        n_train, n_val = (sum(t * n[i] * PAPER_EPOCHS for _, t, *n in phases) for i in (0, 1))
        experiments.append({"experiment": name, "model": model, "train_frames_total": n_train,
                            "val_frames_total": n_val,
                            "hours": {p: hours(model, p, n_train, n_val) for p in args.precisions}})
    for p in args.precisions:
        every = [row["hours"][p] for row in experiments]
        h = None if None in every else sum(every)
        total[p] = {"hours": h, "paper_gpu_hours": PAPER_GPU_HOURS,
                    "speedup_vs_paper": h and PAPER_GPU_HOURS / h}
    return {"image_size": args.image_size, "comparable_to_paper": args.image_size == 256,
            "validation_rate_batch": val_batch, "note": NOTE, "experiments": experiments,
            "total": total}


def report(results, args):
    f, ps, implied, rate = common.fmt, args.precisions, results["implied"], rates(results)
    for model in args.models:
        r = {p: rate.get((model, p, "train", args.batch_size)) for p in PRECISIONS}
        if all(r.values()):
            common.say(f"{model}: mixed_bfloat16 trains {r['mixed_bfloat16'] / r['float32']:.2f}x"
                       " as fast as float32")
    common.say(f"\n== the paper's five experiments ({PAPER_EPOCHS} epochs a phase), implied "
               "hours ==" + ("" if implied["comparable_to_paper"] else " (NOT at 256x256)"))
    total = implied["total"]
    rows = [[r["experiment"], f"{r['train_frames_total']:,}", f"{r['val_frames_total']:,}"]
            + [f(r["hours"][p]) for p in ps] for r in implied["experiments"]]
    rows += [["total (paper: about 15 GPU-hours)", "", ""] + [f(total[p]["hours"]) for p in ps],
             ["paper / ours", "", ""] + [f(total[p]["speedup_vs_paper"], "x") for p in ps]]
    common.say(common.format_table(["experiment", "train frames", "val frames"]
                                   + [f"h {p}" for p in ps], rows))
    common.say(f"  note: {NOTE}")


def main(argv=None):
    parser = common.benchmark_parser(
        __doc__, 256, models=True, steps=(25, "timed steps per run"),
        repeats=(3, "timed runs per rate, the median counts"), warmup=(2, "untimed warm-up steps"))
    add = parser.add_argument
    from lungseg.cli import positive_int

    add("--infer-batches", type=lambda t: [positive_int(v) for v in t.split(",")],
        default=[1, 20], help="inference batch sizes (default 1,20)")
    add("--precisions", type=common.choice_list(PRECISIONS), default=list(PRECISIONS),
        help="float32,mixed_bfloat16 (default both)")
    add("--require-gpu", action="store_true", help="exit with status 2 if JAX sees no GPU")
    args = parser.parse_args(argv)
    import jax
    import keras
    import numpy

    import lungseg
    from lungseg.files import write_json

    devices = jax.devices()
    env = {"python": sys.version.split()[0], "jax": jax.__version__, "keras": keras.__version__,
           "numpy": numpy.__version__, "keras_backend": keras.backend.backend(),
           "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
           "gpu": any(d.platform == "gpu" for d in devices), "device_kind": devices[0].device_kind,
           "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
           "xla_flags": os.environ.get("XLA_FLAGS"), "lungseg_file": lungseg.__file__}
    common.say(f"keras {env['keras']} on {env['keras_backend']}, jax {env['jax']}; devices: "
               f"{', '.join(env['devices'])}; lungseg from {env['lungseg_file']}; float32 at "
               f"jax_default_matmul_precision={env['jax_default_matmul_precision']} (default: TF32 "
               "on tensor cores)")
    if not env["gpu"]:
        common.say("WARNING: JAX sees NO GPU: these are CPU rates")
        if args.require_gpu:
            return 2
    results = {
        "benchmark": "gpu", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "settings": vars(args) | {"batch1_steps": args.steps * BATCH1_STEPS_FACTOR},
        "environment": env, "models": [], "measurements": [], "implied": None,
    }

    def save():
        results["elapsed_s"] = round(time.monotonic() - START, 1)
        results["implied"] = implied_times(results, args)
        env["tensorflow_imported"] = "tensorflow" in sys.modules
        if args.json:
            write_json(args.json, results)

    measure(args, results, save)
    save()
    report(results, args)
    common.say(f"\ntotal {results['elapsed_s']:.0f} s"
               + (f"; JSON in {args.json}" if args.json else ""))
    if env["tensorflow_imported"]:
        common.say("WARNING: tensorflow was imported during the run")
    return 0 if all(e["valid"] for e in results["measurements"]) else 1


if __name__ == "__main__":
    sys.exit(main())
