"""Training throughput of V-Unet and X-Unet on this CPU: per precision, fed by our pipeline vs in-memory.

Per model (compiled as ``lungseg.training`` compiles it) and precision (default float32, plus
mixed_bfloat16 on a CPU with bfloat16 instructions; the same starting weights) it times
``train_on_batch`` at batch 20 fed the next batch of ``make_dataset(training=True,
augment=PaperAugmentation())`` over the paper's 400 LUS frames ("pipeline") or one such batch
kept in memory ("in-memory"). All steps are interleaved, the order reversed every other step;
the median counts. Target: pipeline / in-memory >= 0.95. Each precision's speed-up over the
first comes with its spread (lowest and highest ratio of steps taken side by side). Then
``predict_on_batch`` of each model and of each mixed model as saved (``inference_copy``),
interleaved. Training FLOPs (3x the forward convolutions) are set against the matmul peak.

    python benchmarks/training.py --json /tmp/bench_training.json     # 128x128: a few minutes
    python benchmarks/training.py --image-size 64 --steps 1 --models xunet   # smoke run
"""

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")

TARGET_RATIO = 0.95
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
FEEDS = ("pipeline", "in_memory")


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 128, models=True, matmul=True)
    add = parser.add_argument
    add("--steps", type=common.positive_int, default=4,
        help="timed steps per feed, precision and model (default 4)")
    add("--warmup", type=common.positive_int, default=1,
        help="untimed steps per model and precision (default 1; the first traces)")
    add("--precision", type=common.choice_list(PRECISIONS), metavar="LIST",
        help="dtype policies, float32 first for the ratios (default float32, plus "
        "mixed_bfloat16 on a CPU with AVX-512 BF16 or AMX)")
    add("--infer-reps", type=int, default=3,
        help="timed predict_on_batch calls per model variant (default 3; 0 skips)")
    args = parser.parse_args(argv)
    if not args.precision:
        from lungseg.precision import choose_precision

        auto = choose_precision("auto", gpu=False)[0]
        args.precision = ["float32"] + ([auto] if auto != "float32" else [])
    return args


def pipeline_cost(frames, batch, epochs=2):
    """The pipeline alone: wall and CPU seconds per augmented batch, after a warm-up epoch."""
    from lungseg import data

    dataset = data.make_dataset(frames, batch, training=True, augment=data.PaperAugmentation(),
                                seed=1)
    for _ in dataset:
        pass
    with common.CpuMonitor() as cpu:
        count = sum(1 for _ in range(epochs) for _ in dataset)
    return {"batches": count, "s_per_batch": cpu.wall_s / count,
            "cpu_s_per_batch": cpu.own_cpu_s / count, "frames_per_s": count * batch / cpu.wall_s}


def measure_model(name, args, frames, peaks, cost):
    import keras
    import tensorflow as tf

    from lungseg import data
    from lungseg.models import inference_copy

    batch, precisions = args.batch_size, args.precision
    models = {}
    for index, precision in enumerate(precisions):
        models[precision] = common.build_model(name, args.image_size, precision,
                                               clear_session=index == 0)
        if index:  # the same starting weights in every precision
            models[precision].set_weights(models[precisions[0]].get_weights())
    keras.mixed_precision.set_global_policy("float32")
    forward = common.forward_flops(models[precisions[0]])
    dataset = data.make_dataset(frames, batch, training=True, augment=data.PaperAugmentation(),
                                seed=0)
    # Full batches only, endlessly; both feeds hand over eager tensors of one shape and dtype,
    # so the step traced in the warm-up serves both.
    iterator = iter(dataset.filter(lambda x, y: tf.shape(x)[0] == batch).repeat())
    fixed = [tf.identity(t) for t in next(iterator)]

    def step(precision, feed):
        x, y = next(iterator) if feed == "pipeline" else fixed
        return models[precision].train_on_batch(x, y, return_dict=True)["loss"]

    warmup = {p: [] for p in precisions}
    for _ in range(args.warmup):
        for p in precisions:
            t0 = time.perf_counter()
            step(p, "pipeline")
            warmup[p].append(round(time.perf_counter() - t0, 3))
    runs = [(p, feed) for p in precisions for feed in FEEDS]
    times = {run: [] for run in runs}
    cpu = {run: [] for run in runs}
    losses = {p: [] for p in precisions}
    for index in range(args.steps):
        for run in runs[::-1] if index % 2 else runs:
            with common.CpuMonitor() as monitor:
                losses[run[0]].append(float(step(*run)))
            times[run].append(monitor.wall_s)
            cpu[run].append(monitor)
        common.say(f"  {name} step {index + 1}/{args.steps}: " + ", ".join(
            f"{p} {feed} {times[p, feed][-1]:.2f} s" for p, feed in runs))
    inference = measure_inference(models, fixed[0], args.infer_reps, inference_copy)
    for p in precisions:
        peaks[p].sample(f"after {name}")

    entries, med = {}, {run: common.median(t) for run, t in times.items()}
    for p in precisions:
        pipe, memory = med[p, "pipeline"], med[p, "in_memory"]
        share = cost["cpu_s_per_batch"] / common.median([m.own_cpu_s for m in cpu[p, "in_memory"]])
        train_gflop = common.TRAIN_FLOPS_FACTOR * forward / 1e9 * batch / pipe
        entries[p] = {
            "warmup_s": warmup[p],
            "times_s": {feed: [round(v, 3) for v in times[p, feed]] for feed in FEEDS},
            "s_per_step": {feed: med[p, feed] for feed in FEEDS},
            "frames_per_s": batch / pipe,
            "in_memory_frames_per_s": batch / memory,
            "ratio_vs_in_memory": memory / pipe,
            "ratio_vs_in_memory_of_best": min(times[p, "in_memory"]) / min(times[p, "pipeline"]),
            # The pipeline's CPU seconds per batch, measured alone, over an in-memory step's:
            # the slowdown it would cause if none of it overlapped training.
            "pipeline_cpu_share_of_step": share,
            "ratio_implied_by_pipeline_cost": 1 / (1 + share),
            "achieved_gflop_per_s": train_gflop,
            "fraction_of_matmul_peak": train_gflop / peaks[p].best,
            "losses": [round(v, 5) for v in losses[p]],
            "losses_finite": all(math.isfinite(v) for v in losses[p]),
            "cpu": common.merge_cpu(cpu[p, "pipeline"] + cpu[p, "in_memory"]),
        }
        entries[p]["target"] = {"ratio_vs_in_memory": TARGET_RATIO,
                                "pass": entries[p]["ratio_vs_in_memory"] >= TARGET_RATIO}
    speedup = {}
    for p in precisions[1:]:
        for feed in FEEDS:
            pairs = [b / q for b, q in zip(times[precisions[0], feed], times[p, feed])]
            speedup.setdefault(p, {})[feed] = {
                "median_ratio": med[precisions[0], feed] / med[p, feed],
                "per_step": [round(r, 3) for r in pairs], "min": min(pairs), "max": max(pairs)}
    models = iterator = None  # frees them (the step closure shares these names)
    keras.backend.clear_session()
    return {"model": name, "gflop_forward_per_frame": forward / 1e9,
            "gflop_forward_per_frame_at_256": forward / 1e9 * (256 / args.image_size) ** 2,
            "precisions": entries, f"speedup_vs_{precisions[0]}": speedup,
            "inference": inference, "losses_finite": all(e["losses_finite"] for e in entries.values())}


def measure_inference(models, x, reps, inference_copy):
    """Median seconds of ``predict_on_batch(x)``: each model and each mixed model saved as
    float32, interleaved; times relative to the first."""
    if not reps:
        return None
    variants = {}
    for precision, model in models.items():
        variants[precision] = model
        if precision != "float32":
            variants[f"{precision} saved as float32"] = inference_copy(model)
    labels = list(variants)
    times = {label: [] for label in labels}
    for model in variants.values():
        model.predict_on_batch(x)  # trace, untimed
    for rep in range(reps):
        for label in labels[::-1] if rep % 2 else labels:
            t0 = time.perf_counter()
            variants[label].predict_on_batch(x)
            times[label].append(time.perf_counter() - t0)
    base = common.median(times[labels[0]])
    return {label: {"times_s": [round(v, 3) for v in t], "s_per_batch": common.median(t),
                    f"time_vs_{labels[0]}": common.median(t) / base} for label, t in times.items()}


def main(argv=None):
    args, start = parse_args(argv), time.monotonic()
    say, fmt, precisions = common.say, common.fmt, args.precision
    machine = common.header(f"training benchmark, {', '.join(precisions)}")
    peaks = {}
    for p in precisions:
        dtype = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(p, "float32")
        peaks[p] = common.PeakTracker(args.matmul_n, dtype)
        say(f"matmul peak ({dtype}): {peaks[p].sample('start')} GFLOP/s")
    frames, load_s = common.load_lus_400(common.lus_dataset(cache=args.cache)[0],
                                         args.image_size)
    cost = pipeline_cost(frames, args.batch_size)
    say(f"400 LUS frames loaded in {load_s:.2f} s; the pipeline alone: "
        f"{1000 * cost['cpu_s_per_batch']:.0f} CPU-ms per batch ({fmt(cost['frames_per_s'])} frames/s)")
    results = {
        "benchmark": "training",
        "settings": {"image_size": args.image_size, "batch_size": args.batch_size,
                     "timed_steps_per_feed": args.steps, "warmup_steps": args.warmup,
                     "precisions": precisions, "models": args.models,
                     "step": "train_on_batch, all precisions and feeds interleaved; median step",
                     "flops": f"Conv2D/Conv2DTranspose; a step = {common.TRAIN_FLOPS_FACTOR}x forward"},
        "machine": machine,
    }
    for name in args.models:
        say(f"{name}: {args.warmup} warm-up and {args.steps} timed steps per feed and precision")
        results[name] = measure_model(name, args, frames, peaks, cost)
    results["matmul_peak"] = {p: peaks[p].as_dict() for p in precisions}
    results["pipeline_alone"] = cost
    common.finish(results, args, report, start)
    return 0 if all(results[n]["losses_finite"] for n in args.models) else 1


def report(r, args):
    say, fmt, s = common.say, common.fmt, r["settings"]
    base = s["precisions"][0]
    say(f"\n== training, {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, "
        f"median of {s['timed_steps_per_feed']} steps per feed ==")
    say(common.format_table(
        ["model", "precision", "s/step pipe", "s/step mem", "frames/s pipe", "pipe/mem",
         f">= {TARGET_RATIO}", "pipe/mem best", "implied by cost", "GFLOP/s", "of matmul peak"],
        [[n, p, f"{e['s_per_step']['pipeline']:.2f}", f"{e['s_per_step']['in_memory']:.2f}",
          fmt(e["frames_per_s"]), f"{e['ratio_vs_in_memory']:.3f}",
          "PASS" if e["target"]["pass"] else "FAIL", f"{e['ratio_vs_in_memory_of_best']:.3f}", f"{e['ratio_implied_by_pipeline_cost']:.4f}",
          fmt(e["achieved_gflop_per_s"]), f"{e['fraction_of_matmul_peak']:.2f}"]
         for n in args.models for p, e in r[n]["precisions"].items()]))
    say("implied by cost: 1 / (1 + the pipeline's CPU-s per batch alone / an in-memory step's), "
        "the ratio if none of the pipeline overlapped training")
    if len(s["precisions"]) > 1:
        say(f"\nspeed-up over {base}: median ratio (lowest-highest of steps side by side)")
        say(common.format_table(["model", "precision", *FEEDS], [
            [n, p] + [f"{v[f]['median_ratio']:.2f}x ({v[f]['min']:.2f}-{v[f]['max']:.2f})"
                      for f in FEEDS]
            for n in args.models for p, v in r[n][f"speedup_vs_{base}"].items()]))
    if all(r[n]["inference"] for n in args.models):
        say(f"\ninference, predict_on_batch of {s['batch_size']} frames, median")
        say(common.format_table(["model", "variant", "s/batch", f"time vs {base}"], [
            [n, label, f"{e['s_per_batch']:.3f}", f"{e[f'time_vs_{base}']:.2f}"]
            for n in args.models for label, e in r[n]["inference"].items()]))
    for p, peak in r["matmul_peak"].items():
        say(f"matmul peak for {p}: best {fmt(peak['best_gflop_per_s'])} GFLOP/s, median "
            f"{fmt(peak['median_gflop_per_s'])}")
    say("cpu: " + common.contention_note(common.merge_cpu(
        e["cpu"] for n in args.models for e in r[n]["precisions"].values())))
    say(f"total {r['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
