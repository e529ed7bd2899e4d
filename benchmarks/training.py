"""Training throughput of V-Unet and X-Unet on this CPU: fed by our pipeline vs in-memory tensors.

For each model (built as ``lungseg.training`` builds it: V-Unet with random VGG16 weights,
compiled with Adam, ``lungseg.dice_loss`` and the Dice, IoU and accuracy metrics) it times
training steps at batch 20 two ways, interleaved step by step (ABBA order) so both see the same
machine load:

* pipeline: each batch drawn from ``lungseg.data.make_dataset(training=True,
  augment=PaperAugmentation())`` over the paper's 400 LUS frames (its 200 of 300 generated
  phantoms + mirror images), its iterator prefetching in the background as in ``model.fit``;
* in-memory: one batch of the same pipeline, kept as fixed tensors and fed again every step.

Both go through ``model.train_on_batch`` (the same compiled step ``model.fit`` runs; one trace,
warmed up first). Target: pipeline / in-memory >= 0.95. The achieved rate is also set against
this machine's matrix-multiply peak, measured in the same run (best rep of a 4096^2 float32
``tf.linalg.matmul``, sampled before and after each model): FLOPs are counted from the model's
Conv2D / Conv2DTranspose layers, a training step taken as 3x the forward pass.

Defaults (128x128, 4 timed steps per feed) keep the run to a few minutes on a 2-core CPU, where
a 256x256 batch-20 V-Unet step takes about 30 s; ``--image-size 256`` gives the paper's size.

    python benchmarks/training.py --json /tmp/bench_training.json
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


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 128, "the paper's is 256", models=True)
    add = parser.add_argument
    add("--steps", type=common.positive_int, default=4, help="timed steps per feed and model (default 4)")
    add("--warmup", type=common.positive_int, default=1,
        help="untimed warm-up steps per model (default 1; the first traces)")
    add("--precision", choices=PRECISIONS, default="float32",
        help="Keras dtype policy (default float32, as lungseg trains by default); "
        "the matmul peak is measured in the policy's compute dtype")
    return parser.parse_args(argv)


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


def measure_model(name, args, frames, peak, say, pipeline_cost):
    import tensorflow as tf

    from lungseg import data

    batch = args.batch_size
    t0 = time.perf_counter()
    model = common.build_compiled_model(name, args.image_size, args.precision)
    build_s = time.perf_counter() - t0
    rows, uncounted = common.conv_flops(model)
    forward = sum(flops for _, flops in rows)
    params = int(model.count_params())

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

    def pipeline_step():
        x, y = next(iterator)
        return model.train_on_batch(x, y, return_dict=True)

    def memory_step():
        return model.train_on_batch(fixed_x, fixed_y, return_dict=True)

    warmup = []
    for _ in range(args.warmup):
        t0 = time.perf_counter()
        pipeline_step()
        warmup.append(time.perf_counter() - t0)

    times = {"pipeline": [], "in_memory": []}
    cpu_s = {"pipeline": [], "in_memory": []}
    monitors = []
    losses = []
    for step in range(args.steps):
        order = [("pipeline", pipeline_step), ("in_memory", memory_step)]
        if step % 2:
            order.reverse()
        for feed, function in order:
            with common.CpuMonitor() as cpu:
                t0 = time.perf_counter()
                logs = function()
                times[feed].append(time.perf_counter() - t0)
            monitors.append(cpu)
            cpu_s[feed].append(cpu.own_cpu_s)
            losses.append(float(logs["loss"]))
        say(
            f"  {name} step {step + 1}/{args.steps}: pipeline {times['pipeline'][-1]:.2f} s, "
            f"in-memory {times['in_memory'][-1]:.2f} s"
        )
    peak.sample(f"after {name}")

    model = iterator = None  # frees them (the closures above share these variables)
    import keras

    keras.backend.clear_session()
    pipe_s, memory_s = common.median(times["pipeline"]), common.median(times["in_memory"])
    memory_cpu_s = common.median(cpu_s["in_memory"])
    share = pipeline_cost["cpu_s_per_batch"] / memory_cpu_s
    return {
        "model": name,
        "build_s": round(build_s, 2),
        "params": params,
        "gflop_forward_per_frame": forward / 1e9,
        "gflop_forward_per_frame_at_256": forward / 1e9 * (256 / args.image_size) ** 2,
        "gflop_train_step_per_frame": common.TRAIN_FLOPS_FACTOR * forward / 1e9,
        "uncounted_layers_with_weights": uncounted,
        "warmup_s": [round(t, 3) for t in warmup],
        "times_s": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "s_per_step": {"pipeline": pipe_s, "in_memory": memory_s},
        "best_s_per_step": {k: min(v) for k, v in times.items()},
        "frames_per_s": batch / pipe_s,
        "in_memory_frames_per_s": batch / memory_s,
        "ratio_vs_in_memory": memory_s / pipe_s,
        "ratio_vs_in_memory_of_best": min(times["in_memory"]) / min(times["pipeline"]),
        # CPU seconds this process spent per step (the pipeline's prefetch threads included).
        "cpu_s_per_step": {k: common.median(v) for k, v in cpu_s.items()},
        "ratio_vs_in_memory_by_cpu_time": memory_cpu_s / common.median(cpu_s["pipeline"]),
        # The pipeline's own CPU cost per batch, measured alone, against an in-memory step:
        # the slowdown it can cause at most if none of it overlapped with training.
        "pipeline_cpu_share_of_step": share,
        "ratio_implied_by_pipeline_cost": 1 / (1 + share),
        "losses_finite": all(math.isfinite(v) for v in losses),
        "cpu": common.merge_cpu(monitors),
    }


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    import keras
    import tensorflow as tf

    say = common.say
    machine = common.machine_info()
    say(f"lungseg training benchmark: tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"{args.precision}")
    say(f"machine: {common.machine_line(machine)}")
    peak_dtype = PEAK_DTYPES[args.precision]
    peak = common.PeakTracker(n=args.matmul_n, repeats=3, dtype=peak_dtype)
    first = peak.sample("start")
    say(f"matmul peak ({peak_dtype}, {args.matmul_n}^2): {first['gflop_per_s']} GFLOP/s")

    source, _ = common.lus_dataset(n=300, cache=args.cache)  # the 400 are chosen from the 300
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
            "precision": args.precision,
            "models": args.models,
            "optimizer": "Adam(1e-5)",
            "loss": "lungseg.dice_loss; metrics dice_coef, iou, binary_accuracy",
            "vunet_encoder_weights": None,
            "pipeline_feed": "make_dataset(400 LUS, training=True, augment=PaperAugmentation()) "
            "iterator, next() inside the timed step",
            "in_memory_feed": "one pipeline batch kept as fixed tensors",
            "step": "model.train_on_batch (the step model.fit compiles), steps interleaved "
            "ABBA; the median step of each feed counts (best steps also recorded)",
            "flops": "Conv2D/Conv2DTranspose layers counted from their shapes; training step "
            f"= {common.TRAIN_FLOPS_FACTOR} x forward",
        },
        "machine": machine,
    }
    for name in args.models:
        say(f"{name}: building, warming up ({args.warmup} step), then {args.steps} steps per feed")
        results[name] = measure_model(name, args, frames, peak, say, pipeline_cost)

    best = peak.best
    for name in args.models:
        entry = results[name]
        entry["achieved_gflop_per_s"] = entry["frames_per_s"] * entry["gflop_train_step_per_frame"]
        entry["fraction_of_matmul_peak"] = entry["achieved_gflop_per_s"] / best
        entry["target"] = {"ratio_vs_in_memory": TARGET_RATIO,
                           "pass": entry["ratio_vs_in_memory"] >= TARGET_RATIO}
    results["matmul_peak"] = peak.as_dict()
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
    say("")
    say(f"== training, {s['image_size']}x{s['image_size']}, batch {s['batch_size']}, "
        f"{s['precision']}, median of {s['timed_steps_per_feed']} timed steps per feed ==")
    rows = []
    for name in args.models:
        e = r[name]
        rows.append([
            name, common.fmt(e["gflop_forward_per_frame"]),
            f"{e['s_per_step']['pipeline']:.2f}", f"{e['s_per_step']['in_memory']:.2f}",
            common.fmt(e["frames_per_s"]), common.fmt(e["in_memory_frames_per_s"]),
            f"{e['ratio_vs_in_memory']:.3f}", f"{e['ratio_vs_in_memory_of_best']:.3f}",
            f"{e['ratio_implied_by_pipeline_cost']:.4f}",
            common.fmt(e["achieved_gflop_per_s"]),
            f"{e['fraction_of_matmul_peak']:.2f}",
        ])
    say(common.format_table(
        ["model", "GFLOP/frame fwd", "s/step pipe", "s/step mem", "frames/s pipe",
         "frames/s mem", "pipe/mem", "pipe/mem best", "implied by cost",
         "GFLOP/s", "of matmul peak"],
        rows,
    ))
    peak = r["matmul_peak"]
    say(f"matmul peak: best {common.fmt(peak['best_gflop_per_s'])} GFLOP/s, median "
        f"{common.fmt(peak['median_gflop_per_s'])} ({len(peak['samples'])} samples of 3 reps, "
        "start and after each model)")
    for name in args.models:
        e = r[name]
        say(f"target {name} pipeline / in-memory >= {TARGET_RATIO}: "
            f"{common.pass_fail(e['target']['pass'])} ({e['ratio_vs_in_memory']:.3f})"
)
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
