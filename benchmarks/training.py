"""Training throughput of V-Unet and X-Unet on this CPU, per precision: our pipeline vs in-memory.

``train_on_batch`` at batch 20 fed by ``make_dataset(training=True)`` over the paper's 400 LUS
frames or by one batch kept in memory, steps interleaved, per model and precision (float32 and,
with bfloat16 instructions, mixed_bfloat16); speed-ups, FLOP/s against the matmul peak, and
prediction of each model and each mixed model as saved. Figures in docs/performance.md.

    python benchmarks/training.py --json /tmp/bench_training.json     # 128x128: a few minutes
    python benchmarks/training.py --image-size 64 --steps 1 --models xunet   # smoke run
"""

import functools
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")

TARGET_RATIO = 0.95
FEEDS = ("pipeline", "in_memory")


def parse_args(argv=None):
    parser = common.benchmark_parser(
        __doc__, 128, models=True, matmul=True,
        steps=(4, "timed steps per feed, precision and model"),
        warmup=(1, "untimed steps per model and precision (the first traces)"),
        infer_reps=(3, "timed predict_on_batch calls per model variant"))
    from lungseg.config import PRECISIONS

    parser.add_argument("--precision", type=common.choice_list(PRECISIONS), metavar="LIST",
                        help="dtype policies, float32 first for the ratios (default float32, "
                        "plus mixed_bfloat16 on a CPU with AVX-512 BF16 or AMX)")
    args = parser.parse_args(argv)
    if not args.precision:
        from lungseg.precision import choose_precision

        auto = choose_precision("auto", gpu=False)[0]
        args.precision = ["float32"] + ([auto] if auto != "float32" else [])
    return args


def augmented(frames, batch, seed):
    from lungseg import data

    return data.make_dataset(frames, batch, training=True, augment=data.PaperAugmentation(),
                             seed=seed)


def pipeline_cost(frames, batch, epochs=2):
    """The pipeline alone: wall and CPU seconds per augmented batch, after a warm-up epoch."""
    dataset = augmented(frames, batch, seed=1)
    for _ in dataset:
        pass
    with common.CpuMonitor() as cpu:
        count = sum(1 for _ in range(epochs) for _ in dataset)
    return {"batches": count, "s_per_batch": cpu.wall_s / count,
            "cpu_s_per_batch": cpu.own_cpu_s / count, "frames_per_s": count * batch / cpu.wall_s}


def measure_model(name, args, frames, peaks, cost):
    import keras
    import tensorflow as tf

    batch, precisions = args.batch_size, args.precision
    models = {}
    for index, precision in enumerate(precisions):
        models[precision] = common.build_model(name, args.image_size, precision,
                                               clear_session=index == 0)
        if index:  # the same starting weights in every precision
            models[precision].set_weights(models[precisions[0]].get_weights())
    keras.mixed_precision.set_global_policy("float32")
    forward = common.forward_flops(models[precisions[0]])
    # Full batches only, endlessly; both feeds hand over eager tensors of one shape and dtype,
    # so the step traced in the warm-up serves both.
    iterator = iter(augmented(frames, batch, seed=0).filter(
        lambda x, y: tf.shape(x)[0] == batch).repeat())
    fixed = [tf.identity(t) for t in next(iterator)]

    def step(precision, feed):
        x, y = next(iterator) if feed == "pipeline" else fixed
        return float(models[precision].train_on_batch(x, y, return_dict=True)["loss"])

    for _ in range(args.warmup):
        for precision in precisions:
            step(precision, "pipeline")
    times, cpu, losses = common.interleaved(
        {(p, feed): functools.partial(step, p, feed) for p in precisions for feed in FEEDS},
        args.steps, f"{name} step")
    inference = measure_inference(models, fixed[0], args.infer_reps)
    for p in precisions:
        peaks[p].sample(f"after {name}")
    models = iterator = None  # frees them (the step closure shares these names)
    keras.backend.clear_session()

    entries, med = {}, {run: statistics.median(t) for run, t in times.items()}
    for p in precisions:
        pipe, memory = med[p, "pipeline"], med[p, "in_memory"]
        # The pipeline's CPU seconds per batch, measured alone, over an in-memory step's: the
        # slowdown it would cause if none of it overlapped training.
        step_cpu = statistics.median([m.own_cpu_s for m in cpu[p, "in_memory"]])
        share = cost["cpu_s_per_batch"] / step_cpu
        gflops = common.TRAIN_FLOPS_FACTOR * forward / 1e9 * batch / pipe
        entries[p] = {
            "times_s": {feed: [round(v, 3) for v in times[p, feed]] for feed in FEEDS},
            "s_per_step": {feed: med[p, feed] for feed in FEEDS},
            "frames_per_s": batch / pipe, "in_memory_frames_per_s": batch / memory,
            "ratio_vs_in_memory": memory / pipe,
            "ratio_vs_in_memory_of_best": min(times[p, "in_memory"]) / min(times[p, "pipeline"]),
            "pipeline_cpu_share_of_step": share, "ratio_implied_by_pipeline_cost": 1 / (1 + share),
            "achieved_gflop_per_s": gflops, "fraction_of_matmul_peak": gflops / peaks[p].best,
            "losses_finite": all(math.isfinite(v) for f in FEEDS for v in losses[p, f]),
            "cpu": common.merge_cpu(cpu[p, "pipeline"] + cpu[p, "in_memory"]),
            "target": {"ratio_vs_in_memory": TARGET_RATIO, "pass": memory / pipe >= TARGET_RATIO},
        }
    speedup = {p: {} for p in precisions[1:]}
    for p, feed in ((p, feed) for p in precisions[1:] for feed in FEEDS):
        pairs = [b / q for b, q in zip(times[precisions[0], feed], times[p, feed])]
        speedup[p][feed] = {"median_ratio": med[precisions[0], feed] / med[p, feed],
                            "min": min(pairs), "max": max(pairs)}
    return {"model": name, **common.flops_info(forward, args.image_size),
            "precisions": entries, f"speedup_vs_{precisions[0]}": speedup, "inference": inference,
            "losses_finite": all(e["losses_finite"] for e in entries.values())}


def measure_inference(models, x, reps):
    """Seconds of ``predict_on_batch(x)`` of each model and each mixed one saved as float32."""
    from lungseg.models import inference_copy

    variants = models | {f"{precision} saved as float32": inference_copy(model)
                         for precision, model in models.items() if precision != "float32"}
    for model in variants.values():
        model.predict_on_batch(x)  # trace, untimed
    times = common.interleaved({label: functools.partial(model.predict_on_batch, x)
                                for label, model in variants.items()}, reps)[0]
    first = next(iter(times))
    return {label: {"times_s": [round(v, 3) for v in t], "s_per_batch": statistics.median(t),
                    f"time_vs_{first}": statistics.median(t) / statistics.median(times[first])}
            for label, t in times.items()}


def main(argv=None):
    args, start = parse_args(argv), time.monotonic()
    results = {"benchmark": "training", "machine": common.header(
        f"training benchmark, {', '.join(args.precision)}")}
    peaks = {p: common.PeakTracker(args.matmul_n, p) for p in args.precision}
    for peak in peaks.values():
        common.say(f"matmul peak ({peak.dtype}): {peak.sample('start')} GFLOP/s")
    frames = common.load_lus_400(common.lus_dataset(), args.image_size)
    results["pipeline_alone"] = cost = pipeline_cost(frames, args.batch_size)
    common.say(f"the pipeline alone: {1000 * cost['cpu_s_per_batch']:.0f} CPU-ms per batch "
               f"({common.fmt(cost['frames_per_s'])} frames/s)")
    for name in args.models:
        results[name] = measure_model(name, args, frames, peaks, cost)
    results["matmul_peak"] = {p: peaks[p].as_dict() for p in args.precision}
    common.finish(results, args, report, start)
    return 0 if all(results[n]["losses_finite"] for n in args.models) else 1


def report(r, args):
    say, fmt, base = common.say, common.fmt, args.precision[0]
    say(f"\n== training, {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"median of {args.steps} steps per feed ==")
    say(common.format_table(
        ["model", "precision", "s/step pipe", "s/step mem", "frames/s pipe", "pipe/mem",
         f">= {TARGET_RATIO}", "pipe/mem best", "implied by cost", "GFLOP/s", "of matmul peak"],
        [[n, p, f"{e['s_per_step']['pipeline']:.2f}", f"{e['s_per_step']['in_memory']:.2f}",
          fmt(e["frames_per_s"]), f"{e['ratio_vs_in_memory']:.3f}",
          "PASS" if e["target"]["pass"] else "FAIL", f"{e['ratio_vs_in_memory_of_best']:.3f}",
          f"{e['ratio_implied_by_pipeline_cost']:.4f}", fmt(e["achieved_gflop_per_s"]),
          f"{e['fraction_of_matmul_peak']:.2f}"]
         for n in args.models for p, e in r[n]["precisions"].items()]))
    if len(args.precision) > 1:
        say(f"\nspeed-up over {base}: median ratio (lowest-highest of steps side by side)")
        say(common.format_table(["model", "precision", *FEEDS], [
            [n, p] + [f"{v[f]['median_ratio']:.2f}x ({v[f]['min']:.2f}-{v[f]['max']:.2f})"
                      for f in FEEDS]
            for n in args.models for p, v in r[n][f"speedup_vs_{base}"].items()]))
    say(f"\ninference, predict_on_batch of {args.batch_size} frames, median")
    say(common.format_table(["model", "variant", "s/batch", f"time vs {base}"], [
        [n, label, f"{e['s_per_batch']:.3f}", f"{e[f'time_vs_{base}']:.2f}"]
        for n in args.models for label, e in r[n]["inference"].items()]))
    say("cpu: " + common.contention_note(common.merge_cpu(
        e["cpu"] for n in args.models for e in r[n]["precisions"].values())))


if __name__ == "__main__":
    sys.exit(main())
