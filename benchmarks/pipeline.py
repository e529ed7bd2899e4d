"""Training input pipeline: our tf.data batches vs the paper's ImageDataGenerator, side by side.

The paper's 400 LUS frames, augmented, batch 20: ours (decoded once; bilinear, the targets'
number, and nearest) against the notebooks' two zipped ImageDataGenerators over files, epochs
interleaved. Targets: ours >= 10x the paper's and >= 1,000 frames/s. Figures in
docs/performance.md and docs/beyond_the_paper.md (``--augment strong``).

    python benchmarks/pipeline.py --json /tmp/bench_pipeline.json     # about a minute
    python benchmarks/pipeline.py --augment strong --json /tmp/bench_pipeline_strong.json
"""

import functools
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.setup("tensorflow")

PAPER_AUGMENTATION = dict(rotation_range=0.15, width_shift_range=0.05, height_shift_range=0.05,
                          shear_range=0.05, zoom_range=0.05, horizontal_flip=True,
                          fill_mode="nearest")
TARGET_RATIO, TARGET_FPS = 10.0, 1000.0
PIPELINES = {"ours": "ours, bilinear (cached frames)",
             "ours_nearest": "ours, nearest (cached frames)",
             "paper": "paper: ImageDataGenerator x2 (files)"}


def write_paper_layout(source, target, names):
    """The frames ``names`` and their mirror images as TIFFs in ``target/{IMG,MASK}/frames``."""
    import cv2

    from lungseg import data
    from lungseg.data.io import write_image

    roots = target / "IMG", target / "MASK"
    pairs = [pair for pair in data.find_pairs(source) if pair.name in set(names)]
    for root, prefix, attribute in zip(roots, ("img_", "mask_"), ("image", "mask")):
        (root / "frames").mkdir(parents=True)
        for pair in pairs:
            path = getattr(pair, attribute)
            shutil.copyfile(path, root / "frames" / f"{prefix}{pair.name}.tif")
            picture = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            write_image(root / "frames" / f"{prefix}{pair.name}_flipped.tif", picture[:, ::-1])
    return roots, 2 * len(pairs)


def paper_generators(roots, size, batch_size, seed=1):
    """The notebooks' image (RGB) and mask generators (flow_from_dataframe needs pandas)."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    flow = dict(target_size=(size, size), class_mode=None, batch_size=batch_size, shuffle=True,
                seed=seed)
    images, masks = (
        ImageDataGenerator(**PAPER_AUGMENTATION, rescale=1 / 255).flow_from_directory(
            str(root), color_mode=mode, **flow) for root, mode in zip(roots, ("rgb", "grayscale")))
    names = [[Path(f).name.split("_", 1)[1] for f in it.filenames] for it in (images, masks)]
    if names[0] != names[1]:
        raise RuntimeError("image and mask files do not pair up in flow_from_directory's order")
    return images, masks


def paper_epoch(images, masks):
    """One epoch of the zipped generators, masks binarised as the notebooks did."""
    frames = 0
    for _ in range(len(images)):
        x, y = next(images), next(masks)
        y[y > 0.5], y[y <= 0.5] = 1.0, 0.0
        frames += len(x)
    return frames


def ours_epoch(dataset):
    """One epoch of our tf.data set: a fresh iterator, as Keras starts one per epoch."""
    return sum(int(x.shape[0]) for x, _ in dataset)


def timed_epochs(function, arguments, count):
    """(frames, seconds, CpuMonitor) of each of ``count`` epochs."""
    epochs = []
    for _ in range(count):
        with common.CpuMonitor() as cpu:
            frames = function(*arguments)
        epochs.append((frames, cpu.wall_s, cpu))
    return epochs


def summary(label, epochs):
    """Rate over all timed epochs (frames / seconds) and the range of single epochs."""
    frames, seconds = sum(e[0] for e in epochs), sum(e[1] for e in epochs)
    rates = [f / s for f, s, _ in epochs]
    return {"pipeline": label, "epochs": len(epochs), "frames": frames,
            "seconds": round(seconds, 4), "s_per_epoch": seconds / len(epochs),
            "frames_per_s": frames / seconds, "epoch_frames_per_s_min": min(rates),
            "epoch_frames_per_s_max": max(rates), "cpu": common.merge_cpu(c for *_, c in epochs)}


def main(argv=None):
    parser = common.benchmark_parser(
        __doc__, 256, rounds=(3, "timed rounds"),
        ours_epochs=(5, "epochs of each of our pipelines per round"),
        paper_epochs=(1, "the paper's epochs per round"))
    from lungseg.config import AUGMENT_INTERPOLATIONS, AUGMENT_POLICIES

    parser.add_argument("--augment", choices=AUGMENT_POLICIES, default="paper",
                        help="our pipelines' augmentation (default paper; the paper's pipeline "
                        "always runs the paper's)")
    args, start = parser.parse_args(argv), time.monotonic()
    machine, size, batch = common.header("pipeline benchmark"), args.image_size, args.batch_size
    from lungseg import data

    source = common.lus_dataset()
    with common.CpuMonitor() as load:  # ours decodes once, before its (steady) epochs
        frames = common.load_lus_400(source, size)
    augmentations = {k: data.make_augmentation(args.augment, k) for k in AUGMENT_INTERPOLATIONS}
    ours = [data.make_dataset(frames, batch, training=True, augment=a, seed=0)
            for a in augmentations.values()]
    with tempfile.TemporaryDirectory(prefix="lungseg-paper-layout-") as workdir:
        originals = [name for name in frames.names if not name.endswith(data.FLIP_SUFFIX)]
        roots, n_files = write_paper_layout(source, Path(workdir), originals)
        assert len(frames) == n_files == 400
        runs = {"ours": (ours_epoch, ours[:1], args.ours_epochs),
                "ours_nearest": (ours_epoch, ours[1:], args.ours_epochs),
                "paper": (paper_epoch, paper_generators(roots, size, batch), args.paper_epochs)}
        warm = {key: timed_epochs(function, arguments, 1)[0][1]
                for key, (function, arguments, _) in runs.items()}
        rounds = common.interleaved(
            {key: functools.partial(timed_epochs, *run) for key, run in runs.items()},
            args.rounds, "round")[2]

    epochs = {key: [epoch for done in rounds[key] for epoch in done] for key in runs}
    sums = {key: summary(label, epochs[key]) for key, label in PIPELINES.items()}
    fps, paper_fps = sums["ours"]["frames_per_s"], sums["paper"]["frames_per_s"]
    ratio = fps / paper_fps
    results = {
        "benchmark": "pipeline", "frames_per_s": fps, "paper_frames_per_s": paper_fps,
        "ratio_vs_paper": ratio,
        "targets": {"ratio_vs_paper": {"target": TARGET_RATIO, "pass": ratio >= TARGET_RATIO},
                    "frames_per_s": {"target": TARGET_FPS, "pass": fps >= TARGET_FPS}},
        "one_time_load": common.merge_cpu([load]),
        "warmup_s": warm, **sums,
        "nearest_frames_per_s": sums["ours_nearest"]["frames_per_s"],
        "nearest_ratio_vs_paper": sums["ours_nearest"]["frames_per_s"] / paper_fps,
        "settings": {"augment_policy": f"{args.augment}: {augmentations['bilinear']!r} (ours; "
                     "the paper's pipeline runs the paper's augmentation)",
                     "paper_augmentation": PAPER_AUGMENTATION | {"rescale": "1/255"}},
        "cpu_during_timed_epochs": common.merge_cpu(c for e in epochs.values() for *_, c in e),
        "machine": machine,
    }
    common.finish(results, args, report, start)
    return 0


def report(r, args):
    fmt, verdict = common.fmt, {k: "PASS" if t["pass"] else "FAIL" for k, t in r["targets"].items()}
    common.say(f"\n== input pipeline: 400 LUS frames, {args.image_size}x{args.image_size}, "
               f"{args.augment} augmentation (ours), batch {args.batch_size} ==")
    common.say(common.format_table(
        ["pipeline (steady epochs)", "epochs", "s/epoch", "frames/s", "epoch range", "vs paper"],
        [[label, r[key]["epochs"], f"{r[key]['s_per_epoch']:.3f}", fmt(r[key]["frames_per_s"]),
          f"{fmt(r[key]['epoch_frames_per_s_min'])}-{fmt(r[key]['epoch_frames_per_s_max'])}",
          f"{r[key]['frames_per_s'] / r['paper_frames_per_s']:.1f}x"]
         for key, label in PIPELINES.items()]))
    common.say(f"ours decoded the frames once beforehand, in {r['one_time_load']['wall_s']:.2f} s")
    common.say(f"target ours >= {TARGET_RATIO:.0f}x the paper's: {verdict['ratio_vs_paper']} "
               f"({r['ratio_vs_paper']:.1f}x); ours >= {TARGET_FPS:,.0f} frames/s: "
               f"{verdict['frames_per_s']} ({fmt(r['frames_per_s'])})")
    common.say(f"cpu, timed epochs: {common.contention_note(r['cpu_during_timed_epochs'])}")


if __name__ == "__main__":
    sys.exit(main())
