"""Inference throughput of V-Unet and X-Unet on this CPU, and what lungseg.predict costs on top.

Batch 1 and 20 on LUS phantom frames (random weights) against the FLOP-bound limit, and
``lungseg.predict.segment_batch`` against a bare ``model.predict`` (target >= 0.90, the same
masks). Figures in docs/performance.md.

    python benchmarks/inference.py --json /tmp/bench_inference.json
    python benchmarks/inference.py --image-size 64 --frames 20 --repeats 1   # smoke run
"""

import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")

TARGET_RATIO = 0.90


def measure_model(name, args, frames, peak):
    import cv2
    import keras
    import numpy as np

    from lungseg import predict

    model = common.build_model(name, args.image_size)
    x = predict.model_batch(frames, *predict.input_size(model))  # resized as predict does
    paths = {"bare": functools.partial(model.predict, x, batch_size=args.batch_size, verbose=0),
             "segment_batch": functools.partial(predict.segment_batch, model, frames,
                                                batch_size=args.batch_size)}
    for path in paths.values():  # warm-up: trace every shape the timed calls meet
        path()
    model.predict_on_batch(x[:1])
    single = []
    for index in range(min(args.batch1_frames, len(x))):
        t0 = time.perf_counter()
        model.predict_on_batch(x[index:index + 1])
        single.append(time.perf_counter() - t0)
    times, cpu, outputs = common.interleaved(paths, args.repeats, f"{name} pass")
    peak.sample(f"after {name}")

    expected = [cv2.resize((p[..., 0] > predict.DEFAULT_THRESHOLD).astype(np.uint8),
                           (f.shape[1], f.shape[0]), interpolation=cv2.INTER_NEAREST_EXACT)
                for p, f in zip(outputs["bare"][-1], frames)]
    same = np.mean([np.array_equal(a, b) for a, b in zip(expected, outputs["segment_batch"][-1])])
    fps = {path: len(frames) / statistics.median(t) for path, t in times.items()}
    flops = common.flops_info(common.forward_flops(model), args.image_size)
    model = paths = None
    keras.backend.clear_session()
    return {
        "model": name, **flops,
        "frames_per_s_batch1": 1 / statistics.median(single),
        "frames_per_s_batch20": fps["bare"], "segment_batch_frames_per_s": fps["segment_batch"],
        "predict_vs_bare": fps["segment_batch"] / fps["bare"],
        "predict_vs_bare_of_best": min(times["bare"]) / min(times["segment_batch"]),
        "masks_match_bare_share": float(same),
        "times_s": {k: [round(t, 3) for t in v] for k, v in {**times, "batch1": single}.items()},
        "cpu": common.merge_cpu(cpu["bare"] + cpu["segment_batch"]),
    }


def main(argv=None):
    args = common.benchmark_parser(
        __doc__, 128, models=True, matmul=True, frames=(40, "frames per batched pass"),
        batch1_frames=(6, "frames timed one at a time"),
        repeats=(3, "timed passes of each batched path, the median counts")).parse_args(argv)
    start, machine = time.monotonic(), common.header("inference benchmark")
    from lungseg import data
    from lungseg.data.io import read_image

    peak = common.PeakTracker(args.matmul_n)
    common.say(f"matmul peak (float32): {peak.sample('start')} GFLOP/s")
    pairs = data.find_pairs(common.lus_dataset())
    frames = [read_image(pairs[i % len(pairs)].image) for i in range(args.frames)]
    results = {"benchmark": "inference", "machine": machine}
    for name in args.models:
        results[name] = e = measure_model(name, args, frames, peak)
        e["target"] = {"predict_vs_bare": TARGET_RATIO,
                       "pass": e["predict_vs_bare"] >= TARGET_RATIO}
    for name in args.models:  # against the best matmul rate of the whole run
        e = results[name]
        e["flop_limit_frames_per_s"] = limit = peak.best / e["gflop_forward_per_frame"]
        e["fraction_of_flop_limit"] = e["frames_per_s_batch20"] / limit
        e["fraction_of_flop_limit_batch1"] = e["frames_per_s_batch1"] / limit
    results["matmul_peak"] = peak.as_dict()
    common.finish(results, args, report, start)
    return 0 if all(results[n]["masks_match_bare_share"] == 1 for n in args.models) else 1


def report(r, args):
    fmt, size = common.fmt, args.image_size
    common.say(f"\n== inference, {size}x{size} model input, float32, median of {args.repeats} "
               f"passes of {args.frames} frames ==")
    common.say(common.format_table(
        ["model", "GFLOP/frame", "FLOP-limit frames/s", "frames/s b1", "of limit",
         "frames/s b20", "of limit", "segment_batch", "vs bare", "vs bare, best",
         f">= {TARGET_RATIO}", "same masks"],
        [[n, fmt(e["gflop_forward_per_frame"]), fmt(e["flop_limit_frames_per_s"]),
          fmt(e["frames_per_s_batch1"]), f"{e['fraction_of_flop_limit_batch1']:.2f}",
          fmt(e["frames_per_s_batch20"]), f"{e['fraction_of_flop_limit']:.2f}",
          fmt(e["segment_batch_frames_per_s"]), f"{e['predict_vs_bare']:.3f}",
          f"{e['predict_vs_bare_of_best']:.3f}", "PASS" if e["target"]["pass"] else "FAIL",
          f"{e['masks_match_bare_share']:.0%}"] for n, e in ((n, r[n]) for n in args.models)]))
    common.say("cpu: " + common.contention_note(common.merge_cpu(r[n]["cpu"] for n in args.models)))


if __name__ == "__main__":
    sys.exit(main())
