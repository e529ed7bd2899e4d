"""Training throughput of V-Unet and X-Unet on this CPU: per precision, fed by our pipeline vs in-memory.

For each model (built as ``lungseg.training`` builds it: V-Unet with random VGG16 weights,
compiled with Adam, ``lungseg.dice_loss`` and the Dice, IoU and accuracy metrics) and each
precision asked for (by default float32 and, on a CPU with bfloat16 instructions,
mixed_bfloat16: one model per precision, the same starting weights) it times training steps at
batch 20 two ways, all interleaved step by step (the order reversed every other step) so every
combination sees the same machine load:

* pipeline: each batch drawn from ``lungseg.data.make_dataset(training=True,
  augment=PaperAugmentation())`` over the paper's 400 LUS frames (200 generated phantoms +
  mirror images), its iterator prefetching in the background as in ``model.fit``;
* in-memory: one batch of the same pipeline, kept as fixed tensors and fed again every step.

Both go through ``model.train_on_batch`` (the same compiled step ``model.fit`` runs; one trace,
warmed up first). Target: pipeline / in-memory >= 0.95 in every precision. With several
precisions, each one's speed-up over float32 is reported: the ratio of the median pipeline
steps, and its spread as the lowest and highest ratio of the steps taken side by side.
Then inference (``predict_on_batch`` of the fixed batch, interleaved): the float32 model, the
mixed-precision model as it trained, and that model as lungseg saves it (``as_float32``), which
should run as fast as float32. The achieved rate is also set against this machine's
matrix-multiply peak, measured in the same run (best rep of a 4096^2 ``tf.linalg.matmul`` in
float32 and in each policy's compute dtype, sampled at the start and after each model): FLOPs
are counted from the model's Conv2D / Conv2DTranspose layers, a training step taken as 3x the
forward pass.

Defaults (128x128, 4 timed steps per feed) keep the run to a few minutes on a 2-core CPU, where
a 256x256 batch-20 V-Unet step takes about 30 s; ``--image-size 256`` gives the paper's size.

    python benchmarks/training.py --json /tmp/bench_training.json
    python benchmarks/training.py --precision float32,mixed_bfloat16 --steps 3
    python benchmarks/training.py --image-size 64 --steps 1 --models xunet   # smoke run
"""

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.use_tensorflow_backend()
common.use_repo_checkout()

TARGET_RATIO = 0.95
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
PEAK_DTYPES = {"float32": "float32", "mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
FEEDS = ("pipeline", "in_memory")


def precision_list(text):
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values or any(v not in PRECISIONS for v in values) or len(set(values)) < len(values):
        raise common.argparse.ArgumentTypeError(f"choose from {','.join(PRECISIONS)}; got {text!r}")
    return values


def default_precisions():
    """float32, and mixed_bfloat16 where lungseg's ``auto`` would train in it (this CPU has it)."""
    from lungseg.precision import choose_precision

    auto, _, _ = choose_precision("auto", gpu=False)
    return ["float32"] + ([auto] if auto != "float32" else [])


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 128, "the paper's is 256", models=True)
    add = parser.add_argument
    add("--steps", type=common.positive_int, default=4,
        help="timed steps per feed, precision and model (default 4)")
    add("--warmup", type=common.positive_int, default=1,
        help="untimed warm-up steps per model and precision (default 1; the first traces)")
    add("--precision", type=precision_list, default=None, metavar="LIST",
        help="Keras dtype policies to compare, comma-separated, float32 first for the ratios "
        "(default float32, plus mixed_bfloat16 on a CPU with AVX-512 BF16 or AMX); the matmul "
        "peak is measured in each policy's compute dtype")
    add("--infer-reps", type=common.positive_int, default=3,
        help="timed predict_on_batch calls per model variant (default 3; 0 skips)")
    args = parser.parse_args(argv)
    args.precision = args.precision or default_precisions()
    return args


def measure_pipeline_cost(frames, batch, epochs=2):
    """The pipeline alone: seconds and CPU seconds per augmented batch (after a warm-up epoch)."""
    from lungseg import data

    dataset = data.make_dataset(
        frames, batch, training=True, augment=data.PaperAugmentation(), seed=1
    )
    for _ in dataset:
        pass
    count = 0
    with common.CpuMonitor() as cpu:
        for _ in range(epochs):
            for _ in dataset:
                count += 1
    return {
        "batches": count,
        "s_per_batch": cpu.wall_s / count,
        "cpu_s_per_batch": cpu.own_cpu_s / count,
        "frames_per_s": count * batch / cpu.wall_s,
    }


def measure_model(name, args, frames, peaks, say, pipeline_cost):
    import keras
    import tensorflow as tf

    from lungseg import data
    from lungseg.models import as_float32

    batch = args.batch_size
    precisions = args.precision
    models, build_s = {}, {}
    for index, precision in enumerate(precisions):
        t0 = time.perf_counter()
        models[precision] = common.build_compiled_model(
            name, args.image_size, precision, clear_session=index == 0
        )
        build_s[precision] = time.perf_counter() - t0
        if index:  # the same starting weights in every precision
            models[precision].set_weights(models[precisions[0]].get_weights())
    keras.mixed_precision.set_global_policy("float32")
    first = models[precisions[0]]
    rows, uncounted = common.conv_flops(first)
    forward = sum(flops for _, flops in rows)
    params = int(first.count_params())

    dataset = data.make_dataset(
        frames, batch, training=True, augment=data.PaperAugmentation(), seed=0
    )
    # Full batches only (400 frames need not split evenly), endlessly, as epochs follow epochs.
    dataset = dataset.filter(lambda x, y: tf.shape(x)[0] == batch).repeat()
    iterator = iter(dataset)
    fixed_x, fixed_y = next(iterator)  # the in-memory feed: one pipeline batch, kept
    fixed_x, fixed_y = tf.identity(fixed_x), tf.identity(fixed_y)
    # Both feeds hand train_on_batch eager tensors of one shape and dtype, so the step traced
    # in the warm-up serves both: no retracing inside the timed steps.

    def step(precision, feed):
        x, y = next(iterator) if feed == "pipeline" else (fixed_x, fixed_y)
        return models[precision].train_on_batch(x, y, return_dict=True)

    warmup = {p: [] for p in precisions}
    for _ in range(args.warmup):
        for precision in precisions:
            t0 = time.perf_counter()
            step(precision, "pipeline")
            warmup[precision].append(time.perf_counter() - t0)

    runs = [(p, feed) for p in precisions for feed in FEEDS]
    times = {p: {feed: [] for feed in FEEDS} for p in precisions}
    cpu_s = {p: {feed: [] for feed in FEEDS} for p in precisions}
    monitors = {p: [] for p in precisions}
    losses = {p: [] for p in precisions}
    for index in range(args.steps):
        for precision, feed in runs if index % 2 == 0 else runs[::-1]:
            with common.CpuMonitor() as cpu:
                t0 = time.perf_counter()
                logs = step(precision, feed)
                times[precision][feed].append(time.perf_counter() - t0)
            monitors[precision].append(cpu)
            cpu_s[precision][feed].append(cpu.own_cpu_s)
            losses[precision].append(float(logs["loss"]))
        say(f"  {name} step {index + 1}/{args.steps}: " + "; ".join(
            f"{p} pipeline {times[p]['pipeline'][-1]:.2f} s, in-memory {times[p]['in_memory'][-1]:.2f} s"
            for p in precisions))

    inference = measure_inference(models, fixed_x, args.infer_reps, as_float32) if args.infer_reps else None
    for precision in precisions:
        peaks[precision].sample(f"after {name}")

    entries = {}
    for precision in precisions:
        t, c = times[precision], cpu_s[precision]
        pipe_s, memory_s = common.median(t["pipeline"]), common.median(t["in_memory"])
        memory_cpu_s = common.median(c["in_memory"])
        share = pipeline_cost["cpu_s_per_batch"] / memory_cpu_s
        entries[precision] = {
            "build_s": round(build_s[precision], 2),
            "warmup_s": [round(v, 3) for v in warmup[precision]],
            "times_s": {k: [round(v, 3) for v in values] for k, values in t.items()},
            "s_per_step": {"pipeline": pipe_s, "in_memory": memory_s},
            "best_s_per_step": {k: min(v) for k, v in t.items()},
            "frames_per_s": batch / pipe_s,
            "in_memory_frames_per_s": batch / memory_s,
            "ratio_vs_in_memory": memory_s / pipe_s,
            "ratio_vs_in_memory_of_best": min(t["in_memory"]) / min(t["pipeline"]),
            # CPU seconds this process spent per step (the pipeline's prefetch threads included).
            "cpu_s_per_step": {k: common.median(v) for k, v in c.items()},
            "ratio_vs_in_memory_by_cpu_time": memory_cpu_s / common.median(c["pipeline"]),
            # The pipeline's own CPU cost per batch, measured alone, against an in-memory step:
            # the slowdown it can cause at most if none of it overlapped with training.
            "pipeline_cpu_share_of_step": share,
            "ratio_implied_by_pipeline_cost": 1 / (1 + share),
            "losses": [round(v, 5) for v in losses[precision]],
            "losses_finite": all(math.isfinite(v) for v in losses[precision]),
            "cpu": common.merge_cpu(monitors[precision]),
        }
    speedup = {}
    base = precisions[0]
    for precision in precisions[1:]:
        for feed in FEEDS:
            pairs = [b / p for b, p in zip(times[base][feed], times[precision][feed])]
            speedup.setdefault(precision, {})[feed] = {
                "median_ratio": common.median(times[base][feed]) / common.median(times[precision][feed]),
                "per_step": [round(r, 3) for r in pairs],
                "min": min(pairs),
                "max": max(pairs),
            }

    models = iterator = None  # frees them (the step closure above shares these names)
    keras.backend.clear_session()
    return {
        "model": name,
        "params": params,
        "gflop_forward_per_frame": forward / 1e9,
        "gflop_forward_per_frame_at_256": forward / 1e9 * (256 / args.image_size) ** 2,
        "gflop_train_step_per_frame": common.TRAIN_FLOPS_FACTOR * forward / 1e9,
        "uncounted_layers_with_weights": uncounted,
        "precisions": entries,
        "speedup_vs_" + base: speedup,
        "inference": inference,
        "losses_finite": all(e["losses_finite"] for e in entries.values()),
        "cpu": common.merge_cpu([m for ms in monitors.values() for m in ms]),
    }


def measure_inference(models, x, reps, as_float32):
    """Seconds per ``predict_on_batch(x)`` of each model, and of each mixed model as lungseg
    saves it (float32 copy), interleaved; the median counts."""
    variants = {}
    for precision, model in models.items():
        variants[precision] = model
        if precision != "float32":
            variants[f"{precision} saved as float32"] = as_float32(model)
    for model in variants.values():  # trace once, untimed
        model.predict_on_batch(x)
    times = {label: [] for label in variants}
    labels = list(variants)
    for rep in range(reps):
        for label in labels if rep % 2 == 0 else labels[::-1]:
            t0 = time.perf_counter()
            variants[label].predict_on_batch(x)
            times[label].append(time.perf_counter() - t0)
    out = {"batch": int(x.shape[0]), "reps": reps}
    base = common.median(times[labels[0]])
    for label in labels:
        median_s = common.median(times[label])
        out[label] = {"times_s": [round(v, 3) for v in times[label]], "s_per_batch": median_s,
                      "frames_per_s": x.shape[0] / median_s, "time_vs_" + labels[0]: median_s / base}
    return out


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    import keras
    import tensorflow as tf

    say = common.say
    machine = common.machine_info()
    precisions = args.precision
    say(f"lungseg training benchmark: tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"{', '.join(precisions)}")
    say(f"machine: {common.machine_line(machine)}")
    peaks = {}
    for precision in precisions:
        dtype = PEAK_DTYPES[precision]
        peaks[precision] = common.PeakTracker(n=args.matmul_n, repeats=3, dtype=dtype)
        first = peaks[precision].sample("start")
        say(f"matmul peak ({dtype}, {args.matmul_n}^2): {first['gflop_per_s']} GFLOP/s")

    source, _ = common.lus_dataset(n=200, cache=args.cache)
    frames, load_s = common.load_lus_400(source, args.image_size)
    say(f"400 LUS frames at {args.image_size}x{args.image_size} loaded in {load_s:.2f} s")
    pipeline_cost = measure_pipeline_cost(frames, args.batch_size)
    say(f"pipeline alone: {1000 * pipeline_cost['s_per_batch']:.1f} ms and "
        f"{1000 * pipeline_cost['cpu_s_per_batch']:.1f} CPU-ms per augmented batch "
        f"({common.fmt(pipeline_cost['frames_per_s'])} frames/s)")

    results = {
        "benchmark": "training",
        "settings": {
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "timed_steps_per_feed": args.steps,
            "warmup_steps": args.warmup,
            "precisions": precisions,
            "models": args.models,
            "optimizer": "Adam(1e-5)",
            "loss": "lungseg.dice_loss; metrics dice_coef, iou, binary_accuracy",
            "vunet_encoder_weights": None,
            "pipeline_feed": "make_dataset(400 LUS, training=True, augment=PaperAugmentation()) "
            "iterator, next() inside the timed step",
            "in_memory_feed": "one pipeline batch kept as fixed tensors",
            "step": "model.train_on_batch (the step model.fit compiles); the steps of every "
            "precision and feed interleaved, the order reversed every other step; the median "
            "step of each counts (best steps also recorded)",
            "speedup": "float32 median s/step / the precision's; spread: min and max of the "
            "ratios of steps taken side by side",
            "inference": "predict_on_batch of the fixed batch, variants interleaved, median of "
            f"{args.infer_reps}",
            "flops": "Conv2D/Conv2DTranspose layers counted from their shapes; training step "
            f"= {common.TRAIN_FLOPS_FACTOR} x forward",
        },
        "machine": machine,
    }
    for name in args.models:
        say(f"{name}: building {len(precisions)} model(s), warming up ({args.warmup} step each), "
            f"then {args.steps} steps per feed and precision")
        results[name] = measure_model(name, args, frames, peaks, say, pipeline_cost)

    for name in args.models:
        for precision, entry in results[name]["precisions"].items():
            best = peaks[precision].best
            entry["achieved_gflop_per_s"] = entry["frames_per_s"] * results[name]["gflop_train_step_per_frame"]
            entry["fraction_of_matmul_peak"] = entry["achieved_gflop_per_s"] / best
            entry["target"] = {"ratio_vs_in_memory": TARGET_RATIO,
                               "pass": entry["ratio_vs_in_memory"] >= TARGET_RATIO}
    results["matmul_peak"] = {p: peaks[p].as_dict() for p in precisions}
    results["pipeline_alone"] = pipeline_cost
    results["cpu"] = common.merge_cpu_dicts([results[n]["cpu"] for n in args.models])
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    report(results, args)
    if args.json:
        common.write_json(args.json, results)
        say(f"JSON written to {args.json}")
    return 0 if all(results[n]["losses_finite"] for n in args.models) else 1


def report(r, args):
    say = common.say
    s = r["settings"]
    precisions = s["precisions"]
    say("")
    say(f"== training, {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, "
        f"median of {s['timed_steps_per_feed']} timed steps per feed ==")
    rows = []
    for name in args.models:
        for precision in precisions:
            e = r[name]["precisions"][precision]
            rows.append([
                name, precision, common.fmt(r[name]["gflop_forward_per_frame"]),
                f"{e['s_per_step']['pipeline']:.2f}", f"{e['s_per_step']['in_memory']:.2f}",
                common.fmt(e["frames_per_s"]), common.fmt(e["in_memory_frames_per_s"]),
                f"{e['ratio_vs_in_memory']:.3f}", f"{e['ratio_vs_in_memory_of_best']:.3f}",
                f"{e['ratio_implied_by_pipeline_cost']:.4f}",
                common.fmt(e["achieved_gflop_per_s"]),
                f"{e['fraction_of_matmul_peak']:.2f}",
            ])
    say(common.format_table(
        ["model", "precision", "GFLOP/frame fwd", "s/step pipe", "s/step mem", "frames/s pipe",
         "frames/s mem", "pipe/mem", "pipe/mem best", "implied by cost",
         "GFLOP/s", "of matmul peak"],
        rows,
    ))
    base = precisions[0]
    if len(precisions) > 1:
        say("")
        say(f"speed-up over {base} (median s/step ratio; spread: lowest-highest ratio of the "
            "steps taken side by side)")
        rows = []
        for name in args.models:
            for precision, feeds in r[name]["speedup_vs_" + base].items():
                rows.append([name, precision] + [
                    f"{feeds[f]['median_ratio']:.2f}x ({feeds[f]['min']:.2f}-{feeds[f]['max']:.2f})"
                    for f in FEEDS])
        say(common.format_table(["model", "precision", "pipeline", "in-memory"], rows))
    if s["inference"] and all(r[n]["inference"] for n in args.models):
        say("")
        say(f"inference, predict_on_batch of {s['batch_size']} frames (median s; time relative to {base})")
        rows = []
        for name in args.models:
            inf = r[name]["inference"]
            for label, e in inf.items():
                if isinstance(e, dict):
                    rows.append([name, label, f"{e['s_per_batch']:.3f}", common.fmt(e["frames_per_s"]),
                                 f"{e['time_vs_' + base]:.2f}"])
        say(common.format_table(["model", "model variant", "s/batch", "frames/s", f"time vs {base}"], rows))
    for precision, peak in r["matmul_peak"].items():
        say(f"matmul peak {peak['samples'][0]['dtype']}: best {common.fmt(peak['best_gflop_per_s'])} "
            f"GFLOP/s, median {common.fmt(peak['median_gflop_per_s'])} ({len(peak['samples'])} samples "
            "of 3 reps, start and after each model)")
    for name in args.models:
        for precision, e in r[name]["precisions"].items():
            say(f"target {name} {precision} pipeline / in-memory >= {TARGET_RATIO}: "
                f"{common.pass_fail(e['target']['pass'])} ({e['ratio_vs_in_memory']:.3f})")
    say("pipe/mem = in-memory s/step / pipeline s/step of the median steps (the target's); "
        "best: of the best steps; implied by "
        "cost: 1 / (1 + pipeline CPU-s per batch alone / in-memory CPU-s per step), the "
        "ratio if none of the pipeline's work overlapped training")
    say("note: step times vary by about +-10% from step to step even on a quiet machine, so a "
        "few steps resolve the measured ratio to about that much; the implied ratio is precise")
    say("cpu: " + common.contention_note(r["cpu"], r["machine"]["logical_cpus"]))
    if s["image_size"] != 256:
        say(f"note: measured at {s['image_size']}x{s['image_size']}; at 256x256 a step does "
            f"{(256 / s['image_size']) ** 2:.0f}x the work (GFLOP/frame at 256: "
            + ", ".join(f"{n} {r[n]['gflop_forward_per_frame_at_256']:.1f}" for n in args.models)
            + "; the paper: vunet ~102, xunet ~96)")
    say(f"total {r['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
