"""Inference throughput of V-Unet and X-Unet on this CPU, and what lungseg.predict costs on top.

Per model (random weights: speed does not depend on them), on generated 960x128 LUS phantom
frames, in one process:

* batch 1: ``model.predict_on_batch`` of one frame at model size, frame after frame;
* batch 20: a bare ``model.predict(x, batch_size=20)`` of frames already at model size,
  interleaved with ``lungseg.predict.segment_batch(model, frames, batch_size=20)`` of the same
  frames as 960x128 arrays (resizing in and masks back out included), the order alternating.

``predict_vs_bare`` = segment_batch frames/s / bare frames/s (target >= 0.90), and its masks
must equal a bare predict's thresholded and resized back.
Rates are set against the FLOP-bound limit: the best float32 matmul rate sampled during the
run over the forward FLOPs per frame of the convolutions.

    python benchmarks/inference.py --json /tmp/bench_inference.json
    python benchmarks/inference.py --image-size 64 --frames 20 --repeats 1   # smoke run
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")

TARGET_RATIO = 0.90


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 128, models=True, matmul=True)
    add = parser.add_argument
    add("--frames", type=common.positive_int, default=40, help="frames per batched pass (default 40)")
    add("--batch1-frames", type=common.positive_int, default=6,
        help="frames timed one at a time (default 6)")
    add("--repeats", type=common.positive_int, default=3,
        help="timed passes of each batched path, the median counts (default 3)")
    return parser.parse_args(argv)


def measure_model(name, args, frames, peak):
    import cv2
    import keras
    import numpy as np

    from lungseg import predict

    model = common.build_model(name, args.image_size)
    height, width, channels = predict.input_size(model)
    x = predict.model_batch(frames, height, width, channels)  # resized as the predict path does
    paths = {"bare": lambda: model.predict(x, batch_size=args.batch_size, verbose=0),
             "segment_batch": lambda: predict.segment_batch(model, frames,
                                                            batch_size=args.batch_size)}
    t0 = time.perf_counter()  # warm-up: trace every shape the timed calls meet
    for path in paths.values():
        path()
    model.predict_on_batch(x[:1])
    warmup_s = time.perf_counter() - t0

    single = []
    for index in range(min(args.batch1_frames, len(x))):
        t0 = time.perf_counter()
        model.predict_on_batch(x[index:index + 1])
        single.append(time.perf_counter() - t0)
    times, cpu, outputs = {p: [] for p in paths}, [], {}
    for repeat in range(args.repeats):
        for path in list(paths)[::-1] if repeat % 2 else paths:
            with common.CpuMonitor() as monitor:
                outputs[path] = paths[path]()
            times[path].append(monitor.wall_s)
            cpu.append(monitor)
        common.say(f"  {name} pass {repeat + 1}/{args.repeats}: "
                   + ", ".join(f"{p} {t[-1]:.2f} s" for p, t in times.items()))
    peak.sample(f"after {name}")

    # segment_batch must give the masks of a bare predict + threshold + resize back.
    expected = [cv2.resize((p[..., 0] > predict.DEFAULT_THRESHOLD).astype(np.uint8),
                           (f.shape[1], f.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
                for p, f in zip(outputs["bare"], frames)]
    same = np.mean([np.array_equal(a, b) for a, b in zip(expected, outputs["segment_batch"])])
    n, forward = len(frames), common.forward_flops(model)
    fps = {path: n / common.median(t) for path, t in times.items()}
    model = None  # frees the model (the lambdas above share this name)
    keras.backend.clear_session()
    return {
        "model": name,
        "gflop_forward_per_frame": forward / 1e9,
        "gflop_forward_per_frame_at_256": forward / 1e9 * (256 / args.image_size) ** 2,
        "warmup_s": round(warmup_s, 2),
        "frames_per_s_batch1": 1 / common.median(single),
        "frames_per_s_batch20": fps["bare"],
        "segment_batch_frames_per_s": fps["segment_batch"],
        "predict_vs_bare": fps["segment_batch"] / fps["bare"],
        "predict_vs_bare_of_best": min(times["bare"]) / min(times["segment_batch"]),
        "masks_match_bare_share": float(same),
        "times_s": {k: [round(t, 3) for t in v] for k, v in {**times, "batch1": single}.items()},
        "cpu": common.merge_cpu(cpu),
    }


def main(argv=None):
    args, start = parse_args(argv), time.monotonic()
    say, machine = common.say, common.header("inference benchmark")
    from lungseg import data
    from lungseg.data.io import read_image

    peak = common.PeakTracker(args.matmul_n)
    say(f"matmul peak (float32): {peak.sample('start')} GFLOP/s")
    pairs = data.find_pairs(common.lus_dataset(cache=args.cache)[0])
    frames = [read_image(pairs[i % len(pairs)].image) for i in range(args.frames)]
    results = {"benchmark": "inference", "machine": machine, "settings": {
        "image_size": args.image_size, "frames": args.frames, "batch_size": args.batch_size,
        "batch1_frames": args.batch1_frames, "repeats": args.repeats, "models": args.models,
        "frames_source": "write_lus_dataset(n=300) phantoms, 960x128 uint8",
        "rate": "frames / median pass; batch 1: 1 / median single-frame time"}}
    for name in args.models:
        say(f"{name}: warm-up, {args.batch1_frames} single frames, {args.repeats} passes of "
            f"{args.frames} frames per path")
        results[name] = e = measure_model(name, args, frames, peak)
        e["target"] = {"predict_vs_bare": TARGET_RATIO, "pass": e["predict_vs_bare"] >= TARGET_RATIO}
    for name in args.models:  # against the best matmul rate of the whole run
        e = results[name]
        e["flop_limit_frames_per_s"] = limit = peak.best / e["gflop_forward_per_frame"]
        e["fraction_of_flop_limit"] = e["frames_per_s_batch20"] / limit
        e["fraction_of_flop_limit_batch1"] = e["frames_per_s_batch1"] / limit
    results["matmul_peak"] = peak.as_dict()
    common.finish(results, args, report, start)
    return 0 if all(results[n]["masks_match_bare_share"] == 1 for n in args.models) else 1


def report(r, args):
    say, fmt, s = common.say, common.fmt, r["settings"]
    say(f"\n== inference, {s['image_size']}x{s['image_size']} model input, float32, "
        f"median of {s['repeats']} passes of {s['frames']} frames ==")
    say(common.format_table(
        ["model", "GFLOP/frame", "FLOP-limit frames/s", "frames/s b1", "of limit",
         "frames/s b20", "of limit", "segment_batch", "vs bare", "vs bare, best"],
        [[n, fmt(e["gflop_forward_per_frame"]), fmt(e["flop_limit_frames_per_s"]),
          fmt(e["frames_per_s_batch1"]), f"{e['fraction_of_flop_limit_batch1']:.2f}",
          fmt(e["frames_per_s_batch20"]), f"{e['fraction_of_flop_limit']:.2f}",
          fmt(e["segment_batch_frames_per_s"]), f"{e['predict_vs_bare']:.3f}",
          f"{e['predict_vs_bare_of_best']:.3f}"]
         for n, e in ((n, r[n]) for n in args.models)]))
    for n in args.models:
        e = r[n]
        say(f"target {n} segment_batch / bare predict >= {TARGET_RATIO}: "
            f"{'PASS' if e['target']['pass'] else 'FAIL'} ({e['predict_vs_bare']:.3f}); masks "
            f"equal to bare predict + threshold + resize: {e['masks_match_bare_share']:.0%}")
    say("cpu: " + common.contention_note(common.merge_cpu(r[n]["cpu"] for n in args.models)))
    say(f"total {r['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
