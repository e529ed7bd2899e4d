"""Inference throughput of V-Unet and X-Unet on this CPU, and what lungseg.predict costs on top.

For each model (random weights: speed does not depend on them) on generated 960x128 LUS
phantom frames it measures, in one process and interleaved so all paths see the same load:

* batch 1: ``model.predict_on_batch`` of one frame at model size, frame after frame (and
  ``lungseg.predict.segment`` of one 960x128 frame, the single-frame API);
* batch 20: a bare ``model.predict(x, batch_size=20)`` of frames already at model size;
* ``lungseg.predict.segment_batch(model, frames, batch_size=20)`` of the same frames as
  960x128 uint8 arrays (resizing in and masks back out included), and of the frames already
  at model size.

``predict_vs_bare`` = segment_batch (960x128 frames) frames/s / bare predict frames/s; target
>= 0.90. Rates are also set against the FLOP-bound limit: this machine's matrix-multiply peak
(best rep of a 4096^2 float32 ``tf.linalg.matmul``, sampled during the run) divided by the
forward FLOPs per frame counted from the Conv2D / Conv2DTranspose layers.

    python benchmarks/inference.py --json /tmp/bench_inference.json
    python benchmarks/inference.py --image-size 64 --frames 20 --repeats 1   # smoke run
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.use_tensorflow_backend()
common.use_repo_checkout()

TARGET_RATIO = 0.90
PATHS = ("bare", "segment_batch", "segment_batch_model_size")
LABELS = {
    "bare": "model.predict, frames at model size",
    "segment_batch": "segment_batch, 960x128 frames",
    "segment_batch_model_size": "segment_batch, frames at model size",
}


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 128, "the paper's is 256", models=True)
    add = parser.add_argument
    add("--frames", type=common.positive_int, default=40, help="frames per batched pass (default 40)")
    add("--batch1-frames", type=common.positive_int, default=6,
        help="frames timed one at a time, per path (default 6)")
    add("--repeats", type=common.positive_int, default=3,
        help="timed passes of each batched path, the median counts (default 3)")
    return parser.parse_args(argv)


def raw_frames(source, count):
    """``count`` 960x128 uint8 frames as read from disk (cycling through the set if needed)."""
    from lungseg import data
    from lungseg.data.io import read_image

    pairs = data.find_pairs(source)
    return [read_image(pairs[i % len(pairs)].image) for i in range(count)]


def predict_overhead(frames, probabilities, height, width, channels, repeats=5):
    """Seconds segment_batch spends outside the model for ``frames`` (best of ``repeats``).

    Resizing in with ``lungseg.predict.model_batch``, then what segment_batch does with each
    probability map: threshold and resize back to the frame's size (nearest).
    """
    import cv2
    import numpy as np

    from lungseg import predict

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict.model_batch(frames, height, width, channels)
        for frame, probability in zip(frames, probabilities[..., 0]):
            mask = (probability > predict.DEFAULT_THRESHOLD).astype(np.uint8)
            cv2.resize(mask, (frame.shape[1], frame.shape[0]),
                       interpolation=cv2.INTER_NEAREST_EXACT)
        best = min(best, time.perf_counter() - t0)
    return best


def measure_model(name, args, frames, peak, say):
    import cv2
    import keras
    import numpy as np

    from lungseg import predict

    size, batch = args.image_size, args.batch_size
    model = common.build_compiled_model(name, size)
    forward = common.forward_flops(model)
    height, width, channels = predict.input_size(model)
    # The frames at model size, resized exactly as the predict path resizes them.
    x = predict.model_batch(frames, height, width, channels)
    x_list = [frame[:, :, 0] for frame in x]
    one = frames[: args.batch1_frames]

    def bare():
        return model.predict(x, batch_size=batch, verbose=0)

    paths = {
        "bare": bare,
        "segment_batch": lambda: predict.segment_batch(model, frames, batch_size=batch),
        "segment_batch_model_size": lambda: predict.segment_batch(model, x_list, batch_size=batch),
    }

    # Warm-up: trace every shape the timed calls meet: model.predict of full batches (and of
    # the last partial one), predict_on_batch of one frame and of a whole batch (which
    # segment_batch uses when it gets no more than a batch of frames).
    t0 = time.perf_counter()
    tail = len(x) % batch
    model.predict(x[: batch + tail] if len(x) > batch else x, batch_size=batch, verbose=0)
    model.predict_on_batch(x[:1])
    model.predict_on_batch(x[: min(batch, len(x))])
    warmup_s = time.perf_counter() - t0

    # Batch 1, interleaved frame by frame: bare predict_on_batch vs the segment() API.
    single = {"predict_on_batch": [], "segment": []}
    for index, frame in enumerate(one):
        t0 = time.perf_counter()
        model.predict_on_batch(x[index : index + 1])
        single["predict_on_batch"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        predict.segment(model, frame)
        single["segment"].append(time.perf_counter() - t0)

    # Batched paths, in rotating order.
    times = {path: [] for path in PATHS}
    cpu_s = {path: [] for path in PATHS}
    monitors, outputs = [], {}
    for repeat in range(args.repeats):
        order = PATHS[repeat % len(PATHS):] + PATHS[: repeat % len(PATHS)]
        for path in order:
            with common.CpuMonitor() as cpu:
                t0 = time.perf_counter()
                outputs[path] = paths[path]()
                times[path].append(time.perf_counter() - t0)
            monitors.append(cpu)
            cpu_s[path].append(cpu.own_cpu_s)
        say(f"  {name} pass {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{p} {times[p][-1]:.2f} s" for p in PATHS))
    peak.sample(f"after {name}")

    # The predict path must give the masks a bare predict + threshold + resize back gives.
    expected = [
        cv2.resize((p[..., 0] > 0.5).astype(np.uint8), (f.shape[1], f.shape[0]),
                   interpolation=cv2.INTER_NEAREST_EXACT)
        for p, f in zip(outputs["bare"], frames)
    ]
    same = float(np.mean(
        [np.array_equal(a, b) for a, b in zip(expected, outputs["segment_batch"])]
    ))

    n = len(frames)
    fps = {path: n / common.median(times[path]) for path in PATHS}
    fps1 = {k: 1 / common.median(v) for k, v in single.items()}
    overhead_s = predict_overhead(frames, outputs["bare"], height, width, channels)
    bare_s = common.median(times["bare"])
    model = None  # frees the model (the closures above share this variable)
    keras.backend.clear_session()
    return {
        "model": name,
        "gflop_forward_per_frame": forward / 1e9,
        "gflop_forward_per_frame_at_256": forward / 1e9 * (256 / size) ** 2,
        "warmup_s": round(warmup_s, 2),
        "frames_per_s_batch1": fps1["predict_on_batch"],
        "segment_one_frame_per_s": fps1["segment"],
        "frames_per_s_batch20": fps["bare"],
        "segment_batch_frames_per_s": fps["segment_batch"],
        "segment_batch_model_size_frames_per_s": fps["segment_batch_model_size"],
        "predict_vs_bare": fps["segment_batch"] / fps["bare"],
        "predict_model_size_vs_bare": fps["segment_batch_model_size"] / fps["bare"],
        # The same ratio from this process's CPU seconds per pass (less sensitive to other jobs).
        "predict_vs_bare_of_best": min(times["bare"]) / min(times["segment_batch"]),
        "predict_vs_bare_by_cpu_time": common.median(cpu_s["bare"])
        / common.median(cpu_s["segment_batch"]),
        # What segment_batch adds to model.predict, timed alone: resizing the frames in,
        # thresholding and resizing the masks back out.
        "predict_overhead_s": overhead_s,
        "predict_overhead_ms_per_frame": 1000 * overhead_s / n,
        "predict_vs_bare_implied_by_overhead": bare_s / (bare_s + overhead_s),
        "segment_vs_predict_on_batch_batch1": fps1["segment"] / fps1["predict_on_batch"],
        "masks_match_bare_share": same,
        "times_s": {k: [round(t, 3) for t in v] for k, v in {**times, **single}.items()},
        "cpu": common.merge_cpu(monitors),
    }


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    import keras
    import tensorflow as tf

    say = common.say
    machine = common.machine_info()
    say(f"lungseg inference benchmark: tensorflow {tf.__version__}, keras {keras.__version__}")
    say(f"machine: {common.machine_line(machine)}")
    peak = common.PeakTracker(n=args.matmul_n, repeats=3)
    first = peak.sample("start")
    say(f"matmul peak (float32, {args.matmul_n}^2): {first['gflop_per_s']} GFLOP/s")

    source, _ = common.lus_dataset(n=200, cache=args.cache)
    frames = raw_frames(source, args.frames)
    say(f"{len(frames)} frames of {frames[0].shape[0]}x{frames[0].shape[1]} from {source}")

    results = {
        "benchmark": "inference",
        "settings": {
            "image_size": args.image_size,
            "frames": args.frames,
            "batch_size": args.batch_size,
            "batch1_frames": args.batch1_frames,
            "repeats": args.repeats,
            "models": args.models,
            "weights": "random (V-Unet encoder_weights=None)",
            "frames_source": "lungseg.data.write_lus_dataset(n=200) phantoms, 960x128 uint8",
            "batch1": "model.predict_on_batch of one frame at model size, frame by frame",
            "batch20": "model.predict(x, batch_size=20) of frames at model size (= bare)",
            "predict_path": "lungseg.predict.segment_batch(model, 960x128 frames, batch_size=20)",
            "rate": "frames / median pass; batch 1: 1 / median single-frame time",
            "flop_limit": "matmul peak / forward FLOPs per frame (Conv2D/Conv2DTranspose)",
        },
        "machine": machine,
    }
    for name in args.models:
        say(f"{name}: warm-up, {args.batch1_frames} single frames per path, then "
            f"{args.repeats} passes of {args.frames} frames per path")
        results[name] = measure_model(name, args, frames, peak, say)

    best = peak.best
    for name in args.models:
        e = results[name]
        limit = best * 1e9 / (e["gflop_forward_per_frame"] * 1e9)
        e["flop_limit_frames_per_s"] = limit
        e["fraction_of_flop_limit"] = e["frames_per_s_batch20"] / limit
        e["fraction_of_flop_limit_batch1"] = e["frames_per_s_batch1"] / limit
        e["target"] = {"predict_vs_bare": TARGET_RATIO,
                       "pass": e["predict_vs_bare"] >= TARGET_RATIO}
    results["matmul_peak"] = peak.as_dict()
    results["cpu"] = common.merge_cpu_dicts([results[n]["cpu"] for n in args.models])
    results["elapsed_s"] = round(time.monotonic() - start, 1)
    report(results, args)
    if args.json:
        common.write_json(args.json, results)
        say(f"JSON written to {args.json}")
    ok = all(results[n]["masks_match_bare_share"] == 1.0 for n in args.models)
    return 0 if ok else 1


def report(r, args):
    say = common.say
    s = r["settings"]
    say("")
    say(f"== inference, {s['image_size']}x{s['image_size']} model input, float32, "
        f"{s['frames']} frames per batched pass, median of {s['repeats']} ==")
    rows = []
    for name in args.models:
        e = r[name]
        rows.append([
            name, common.fmt(e["gflop_forward_per_frame"]),
            common.fmt(e["flop_limit_frames_per_s"]),
            common.fmt(e["frames_per_s_batch1"]), common.fmt(e["frames_per_s_batch20"]),
            f"{e['fraction_of_flop_limit_batch1']:.2f}", f"{e['fraction_of_flop_limit']:.2f}",
        ])
    say(common.format_table(
        ["model", "GFLOP/frame", "FLOP-limit frames/s", "frames/s b1", "frames/s b20",
         "of limit b1", "of limit b20"],
        rows,
    ))
    say("")
    rows = []
    for name in args.models:
        e = r[name]
        rows.append([name, LABELS["bare"], common.fmt(e["frames_per_s_batch20"]), "1.000"])
        rows.append([name, LABELS["segment_batch"], common.fmt(e["segment_batch_frames_per_s"]),
                     f"{e['predict_vs_bare']:.3f}"])
        rows.append([name, LABELS["segment_batch_model_size"],
                     common.fmt(e["segment_batch_model_size_frames_per_s"]),
                     f"{e['predict_model_size_vs_bare']:.3f}"])
        rows.append([name, "segment(), one 960x128 frame at a time",
                     common.fmt(e["segment_one_frame_per_s"]),
                     f"{e['segment_vs_predict_on_batch_batch1']:.3f} (vs b1)"])
    say(common.format_table(["model", "path (batch 20 unless said)", "frames/s", "vs bare"], rows))
    peak = r["matmul_peak"]
    say(f"matmul peak: best {common.fmt(peak['best_gflop_per_s'])} GFLOP/s, median "
        f"{common.fmt(peak['median_gflop_per_s'])} ({len(peak['samples'])} samples of 3 reps)")
    for name in args.models:
        e = r[name]
        say(f"target {name} segment_batch / bare predict >= {TARGET_RATIO}: "
            f"{common.pass_fail(e['target']['pass'])} ({e['predict_vs_bare']:.3f}; of best passes "
            f"{e['predict_vs_bare_of_best']:.3f}; implied by its overhead alone, "
            f"{e['predict_overhead_ms_per_frame']:.2f} ms/frame: "
            f"{e['predict_vs_bare_implied_by_overhead']:.4f}); masks equal "
            f"to bare predict + threshold + resize: {e['masks_match_bare_share']:.0%} of frames")
    say("cpu: " + common.contention_note(r["cpu"], r["machine"]["logical_cpus"]))
    if s["image_size"] != 256:
        say(f"note: measured at {s['image_size']}x{s['image_size']}; at 256x256 a frame costs "
            f"{(256 / s['image_size']) ** 2:.0f}x the FLOPs")
    say(f"total {r['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
