"""Training input pipeline: our tf.data batches vs the paper's ImageDataGenerator, side by side.

Both pipelines deliver the paper's "400 LUS" training epoch (the paper's 200 frames, chosen by
``select_lus_frames`` from 300 generated 960x128 phantom TIFFs, and their mirror images) at
256x256, augmented with the paper's settings, in batches of 20:

* ours: ``find_pairs`` -> ``load_frames`` (decode + resize once) -> ``select_lus_frames(400,
  flips=True)`` -> ``make_dataset(training=True, augment=PaperAugmentation())``, resampling
  bilinearly as the paper did (the default; the targets' number) and, for comparison, with
  ``interpolation="nearest"``. Batches are uint8 frames (1 channel, 0-255) and float32 0/1
  masks; the models rescale and copy gray to RGB inside the graph.
* the paper's: two ``ImageDataGenerator(rotation_range=0.15, width_shift_range=0.05,
  height_shift_range=0.05, shear_range=0.05, zoom_range=0.05, horizontal_flip=True,
  fill_mode='nearest', rescale=1/255)`` over the 400 frames written to disk (mirror images as
  files, as the authors did), images ``color_mode='rgb'``, masks ``'grayscale'``, same seed,
  zipped, masks binarised at 0.5, resampling bilinear (``interpolation_order=1``, the
  default). ``flow_from_directory`` stands in for the notebooks'
  ``flow_from_dataframe`` (which needs pandas, not installed here): the same iterator class
  family and per-file load/resize/transform work, only the file listing differs.

Each pipeline runs one untimed warm-up epoch, then timed epochs alternate between them in
rounds, in one process, so both see the same machine load. Our pipeline decodes the files once
and caches them; the paper's decodes every file every epoch. The targets compare steady
epochs; the one-time ``load_frames`` cost is reported beside them.

With ``--augment strong`` our two pipelines augment with ``StrongAugmentation`` (nnU-Net's
geometric and intensity augmentation, one resampling per frame) instead; the paper's pipeline
and the targets stay the same, and so do the JSON keys (``settings.augment_policy`` says which).

    python benchmarks/pipeline.py --json /tmp/bench_pipeline.json     # about a minute
    python benchmarks/pipeline.py --augment strong --json /tmp/bench_pipeline_strong.json
"""

import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

common.use_tensorflow_backend()
common.use_repo_checkout()

PAPER_AUGMENTATION = dict(
    rotation_range=0.15,
    width_shift_range=0.05,
    height_shift_range=0.05,
    shear_range=0.05,
    zoom_range=0.05,
    horizontal_flip=True,
    fill_mode="nearest",
)
TARGET_RATIO = 10.0
TARGET_FPS = 1000.0
PAPER_EPOCHS = 100  # for the amortised rate: the paper trained 100 epochs per stage
QUIET_OTHER_CORES = 0.25  # "machine otherwise quiet" in the supplementary rate


def parse_args(argv=None):
    parser = common.benchmark_parser(__doc__, 256, "the paper's")
    add = parser.add_argument
    add("--rounds", type=common.positive_int, default=3,
        help="timed rounds; each runs our two pipelines (bilinear, nearest) --ours-epochs "
        "epochs each and the paper's --paper-epochs epochs (default 3)")
    add("--ours-epochs", type=common.positive_int, default=5, help="our epochs per round (default 5)")
    add("--paper-epochs", type=common.positive_int, default=1,
        help="the paper's epochs per round (default 1)")
    add("--augment", choices=("paper", "strong"), default="paper",
        help="our pipelines' augmentation: the paper's ranges, or nnU-Net's strong geometric and "
        "intensity augmentation (default paper); the paper's pipeline is always the paper's")
    return parser.parse_args(argv)


def write_paper_layout(source, target, names):
    """The 400 frames as the authors had them on disk: 200 TIFF pairs + 200 mirrored pairs.

    ``names`` are the chosen originals; their mirror images are written as ``<name>_flipped``.

    ``flow_from_directory`` wants one sub-folder per class, so the files go to
    ``target/IMG/frames/`` and ``target/MASK/frames/``; image and mask names sort alike.
    Returns the folders and the number of frames.
    """
    import cv2

    from lungseg import data
    from lungseg.data.io import write_image

    image_dir, mask_dir = target / "IMG" / "frames", target / "MASK" / "frames"
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    pairs = [pair for pair in data.find_pairs(source) if pair.name in set(names)]
    for pair in pairs:
        for path, folder, prefix in (
            (pair.image, image_dir, "img_"), (pair.mask, mask_dir, "mask_")
        ):
            shutil.copyfile(path, folder / f"{prefix}{pair.name}.tif")
            picture = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            write_image(folder / f"{prefix}{pair.name}_flipped.tif", picture[:, ::-1])
    return image_dir.parent, mask_dir.parent, 2 * len(pairs)


def paper_generators(image_root, mask_root, size, batch_size, seed=1):
    """The notebooks' zipped image and mask generators (one epoch = len(iterator) batches)."""
    from keras.src.legacy.preprocessing.image import ImageDataGenerator

    common_args = dict(target_size=(size, size), class_mode=None, batch_size=batch_size,
                       shuffle=True, seed=seed)
    images = ImageDataGenerator(**PAPER_AUGMENTATION, rescale=1 / 255).flow_from_directory(
        str(image_root), color_mode="rgb", **common_args
    )
    masks = ImageDataGenerator(**PAPER_AUGMENTATION, rescale=1 / 255).flow_from_directory(
        str(mask_root), color_mode="grayscale", **common_args
    )
    image_names = [Path(f).name.removeprefix("img_") for f in images.filenames]
    mask_names = [Path(f).name.removeprefix("mask_") for f in masks.filenames]
    if image_names != mask_names:
        raise RuntimeError("image and mask files do not pair up in flow_from_directory's order")
    return images, masks


def paper_epoch(images, masks):
    """One epoch of the zipped generators, masks binarised as the notebooks did."""
    frames = 0
    for _ in range(len(images)):
        x = next(images)
        y = next(masks)
        y[y > 0.5] = 1.0
        y[y <= 0.5] = 0.0
        frames += len(x)
    assert x.shape[1:] == (*images.target_size, 3) and y.shape[-1] == 1
    return frames


def ours_epoch(dataset):
    """One epoch of our tf.data set: a fresh iterator, as Keras starts one per epoch."""
    frames = 0
    for x, y in dataset:
        frames += int(x.shape[0])
    return frames


def timed(function, *args):
    with common.CpuMonitor() as cpu:
        t0 = time.perf_counter()
        frames = function(*args)
        seconds = time.perf_counter() - t0
    return frames, seconds, cpu


def summary(label, epochs):
    """Rate over all timed epochs (frames / seconds) and the spread of single epochs."""
    frames = sum(f for f, _, _ in epochs)
    seconds = sum(s for _, s, _ in epochs)
    rates = [f / s for f, s, _ in epochs]
    return {
        "pipeline": label,
        "epochs": len(epochs),
        "frames": frames,
        "seconds": round(seconds, 4),
        "s_per_epoch": seconds / len(epochs),
        "frames_per_s": frames / seconds,
        "epoch_frames_per_s_min": min(rates),
        "epoch_frames_per_s_max": max(rates),
        "cpu": common.merge_cpu([c for _, _, c in epochs]),
        "epoch_detail": [
            {"frames_per_s": round(f / s, 1), **c.as_dict()} for f, s, c in epochs
        ],
    }


def quiet_epochs(entry, limit=QUIET_OTHER_CORES):
    """Rate over the epochs during which other jobs used under ``limit`` cores (or None)."""
    quiet = [e for e in entry["epoch_detail"] if e["other_cores"] is not None
             and e["other_cores"] < limit]
    if not quiet:
        return None
    seconds = sum(e["wall_s"] for e in quiet)
    frames = sum(e["frames_per_s"] * e["wall_s"] for e in quiet)
    return {"epochs": len(quiet), "frames_per_s": frames / seconds,
            "other_cores_below": limit}


def main(argv=None):
    args = parse_args(argv)
    start = time.monotonic()
    import keras
    import tensorflow as tf

    from lungseg import data

    machine = common.machine_info()
    size, batch = args.image_size, args.batch_size
    common.say(
        f"lungseg pipeline benchmark: tensorflow {tf.__version__}, keras {keras.__version__}"
    )
    common.say(f"machine: {common.machine_line(machine)}")

    source, generated_s = common.lus_dataset(n=300, cache=args.cache)
    made = f"generated in {generated_s:.0f} s" if generated_s > 1 else "reused"
    common.say(f"LUS set: {source} ({made})")

    # Ours: the one-time decode + resize (+ mirror copies), then the tf.data set.
    with common.CpuMonitor() as load_cpu:
        frames, load_s = common.load_lus_400(source, size)
    assert len(frames) == 400 and frames.image_size == (size, size)
    bilinear_augmentation = data.make_augmentation(args.augment, "bilinear")
    nearest_augmentation = data.make_augmentation(args.augment, "nearest")
    dataset = data.make_dataset(
        frames, batch, training=True, augment=bilinear_augmentation, seed=0
    )
    nearest_dataset = data.make_dataset(
        frames, batch, training=True, augment=nearest_augmentation, seed=0,
    )
    kind = type(bilinear_augmentation).__name__

    workdir = Path(tempfile.mkdtemp(prefix="lungseg-paper-layout-"))
    try:
        originals = [name for name in frames.names if not name.endswith(data.FLIP_SUFFIX)]
        image_root, mask_root, n_files = write_paper_layout(source, workdir, originals)
        assert n_files == 400
        images, masks = paper_generators(image_root, mask_root, size, batch)

        warm_ours = timed(ours_epoch, dataset)
        warm_nearest = timed(ours_epoch, nearest_dataset)
        warm_paper = timed(paper_epoch, images, masks)
        common.say(
            f"warm-up epochs: ours {warm_ours[1]:.2f} s bilinear, {warm_nearest[1]:.2f} s "
            f"nearest (includes tracing the tf.data functions), paper's {warm_paper[1]:.2f} s"
        )
        ours, nearest, paper = [], [], []
        runs = {
            "ours": (ours, ours_epoch, (dataset,), args.ours_epochs),
            "nearest": (nearest, ours_epoch, (nearest_dataset,), args.ours_epochs),
            "paper": (paper, paper_epoch, (images, masks), args.paper_epochs),
        }
        for round_index in range(args.rounds):
            order = list(runs)
            if round_index % 2:
                order.reverse()  # ABBA: no pipeline always runs first
            for which in order:
                epochs_done, function, arguments, count = runs[which]
                for _ in range(count):
                    epochs_done.append(timed(function, *arguments))
            common.say(
                f"round {round_index + 1}/{args.rounds}: ours "
                f"{common.fmt(ours[-1][0] / ours[-1][1])} frames/s bilinear, "
                f"{common.fmt(nearest[-1][0] / nearest[-1][1])} nearest, paper's "
                f"{common.fmt(paper[-1][0] / paper[-1][1])} frames/s (last epochs)"
            )
        # One batch of each, to record what they hand over.
        x_ours, y_ours = next(iter(dataset))
        x_paper = next(images)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ours_sum = summary(f"ours: make_dataset(training=True, augment={kind}()), "
                       "bilinear", ours)
    nearest_sum = summary(f"ours: make_dataset(training=True, augment={kind}("
                          "interpolation='nearest'))", nearest)
    paper_sum = summary("paper: ImageDataGenerator x2 (image + mask), zipped", paper)
    fps, paper_fps = ours_sum["frames_per_s"], paper_sum["frames_per_s"]
    ratio = fps / paper_fps
    epoch_s = 400 / fps
    first_epoch_fps = 400 / (load_s + epoch_s)
    amortised_fps = PAPER_EPOCHS * 400 / (load_s + PAPER_EPOCHS * epoch_s)
    cpu_all = common.merge_cpu([c for _, _, c in ours + nearest + paper])

    results = {
        "benchmark": "pipeline",
        "frames_per_s": fps,
        "paper_frames_per_s": paper_fps,
        "ratio_vs_paper": ratio,
        "targets": {
            "ratio_vs_paper": {
                "target": TARGET_RATIO, "value": ratio, "pass": ratio >= TARGET_RATIO
            },
            "frames_per_s": {"target": TARGET_FPS, "value": fps, "pass": fps >= TARGET_FPS},
        },
        "includes_one_time_decode": False,
        "rate_definition": "steady epochs after one warm-up epoch each: frames / seconds over "
        "all timed epochs; ours decodes once (load_frames) and caches, the paper's decodes "
        "every file every epoch",
        "one_time_load": {
            "what": "find_pairs + load_frames (decode 300 TIFF pairs, resize) + "
            "select_lus_frames(400, flips=True)",
            "seconds": load_s,
            "frames_per_s": 400 / load_s,
            "cpu": load_cpu.as_dict(),
        },
        "first_epoch_with_load_frames_per_s": first_epoch_fps,
        f"amortised_over_{PAPER_EPOCHS}_epochs_frames_per_s": amortised_fps,
        "warmup_s": {"ours": warm_ours[1], "ours_nearest": warm_nearest[1],
                     "paper": warm_paper[1]},
        "ours": ours_sum,
        "ours_nearest": nearest_sum,
        "nearest_frames_per_s": nearest_sum["frames_per_s"],
        "nearest_ratio_vs_paper": nearest_sum["frames_per_s"] / paper_fps,
        "paper": paper_sum,
        "outputs": {
            "ours": {"images": f"{x_ours.dtype.name} {list(x_ours.shape)}",
                     "masks": f"{y_ours.dtype.name} {list(y_ours.shape)}"},
            "paper": {"images": f"{x_paper.dtype} {list(x_paper.shape)}",
                      "masks": f"float32 {[*x_paper.shape[:3], 1]}"},
            "note": "ours hands the model uint8 1-channel frames (it rescales and copies gray to "
            "RGB in-graph, a cost counted in the training benchmark); the paper's generator "
            "hands float32 RGB already divided by 255",
        },
        "settings": {
            "frames": 400,
            "source": "the paper's 200 of lungseg.data.write_lus_dataset(n=300) phantoms, "
            "960x128 8-bit TIFF, + mirror images",
            "image_size": size,
            "batch_size": batch,
            "augment_policy": f"{args.augment}: {bilinear_augmentation!r} (ours; the paper's "
            "pipeline runs the paper's augmentation)",
            "interpolation": "ours (the targets): bilinear, OpenCV warpAffine, mask thresholded "
            "at 0.5; ours_nearest: one packed nearest-neighbour ImageProjectiveTransformV3; "
            "paper: bilinear (scipy, interpolation_order=1)",
            "rounds": args.rounds,
            "ours_epochs_per_round": args.ours_epochs,
            "paper_epochs_per_round": args.paper_epochs,
            "warmup_epochs": 1,
            "paper_augmentation": PAPER_AUGMENTATION | {"rescale": "1/255"},
            "paper_iterator": "flow_from_directory (flow_from_dataframe needs pandas, absent)",
            "paper_resize": "keras load_img, nearest (its default)",
            "file_cache": "all files read from the OS page cache (written or read just before)",
        },
        "cpu_during_timed_epochs": cpu_all,
        "quiet_epochs": {
            "what": "supplementary: our and the paper's rates over only those timed epochs "
            f"during which other jobs used under {QUIET_OTHER_CORES} cores (not the targets' "
            "numbers)",
            "ours": quiet_epochs(ours_sum),
            "ours_nearest": quiet_epochs(nearest_sum),
            "paper": quiet_epochs(paper_sum),
        },
        "machine": machine,
        "elapsed_s": round(time.monotonic() - start, 1),
    }

    report(results)
    if args.json:
        common.write_json(args.json, results)
        common.say(f"JSON written to {args.json}")
    return 0


def report(r):
    s = r["settings"]
    say = common.say
    say("")
    say(f"== training input pipeline: 400 LUS frames (200 + mirror images), "
        f"{s['image_size']}x{s['image_size']}, {s['augment_policy'].split(':')[0]} augmentation "
        f"(ours), batch {s['batch_size']} ==")
    rows = []
    labels = {
        "ours": "ours: make_dataset, bilinear (cached frames)",
        "ours_nearest": "ours: make_dataset, nearest (cached frames)",
        "paper": "paper: ImageDataGenerator x2 (files)",
    }
    for key, label in labels.items():
        m = r[key]
        rows.append([
            label,
            m["epochs"],
            f"{m['s_per_epoch']:.3f}",
            common.fmt(m["frames_per_s"]),
            f"{common.fmt(m['epoch_frames_per_s_min'])}-{common.fmt(m['epoch_frames_per_s_max'])}",
            f"{m['frames_per_s'] / r['paper_frames_per_s']:.1f}x",
        ])
    say(common.format_table(
        ["pipeline (steady epochs)", "epochs", "s/epoch", "frames/s", "epoch range", "vs paper"],
        rows,
    ))
    load = r["one_time_load"]
    say(f"one-time load_frames (decode 300 TIFF pairs, resize, choose 200 + mirror copies): "
        f"{load['seconds']:.2f} s ({common.fmt(load['frames_per_s'])} frames/s), "
        "not in the rate above")
    say("ours incl. that decode: first epoch "
        f"{common.fmt(r['first_epoch_with_load_frames_per_s'])} "
        f"frames/s; over {PAPER_EPOCHS} epochs "
        f"{common.fmt(r[f'amortised_over_{PAPER_EPOCHS}_epochs_frames_per_s'])} frames/s")
    say("note: the target compares steady epochs: ours decodes once and caches, the paper's "
        "decodes every file every epoch")
    t = r["targets"]
    say(f"target ours >= {TARGET_RATIO:.0f}x the paper's pipeline: "
        f"{common.pass_fail(t['ratio_vs_paper']['pass'])} ({r['ratio_vs_paper']:.1f}x)")
    say(f"target ours >= {TARGET_FPS:,.0f} frames/s on this machine: "
        f"{common.pass_fail(t['frames_per_s']['pass'])} ({common.fmt(r['frames_per_s'])} frames/s)")
    cores = r["machine"]["logical_cpus"]
    say("cpu, our epochs: " + common.contention_note(r["ours"]["cpu"], cores))
    say("cpu, our nearest epochs: " + common.contention_note(r["ours_nearest"]["cpu"], cores))
    say("cpu, the paper's epochs: " + common.contention_note(r["paper"]["cpu"], cores))
    quiet = r["quiet_epochs"]
    if quiet["ours"]:
        q = quiet["ours"]
        say(f"supplementary: our {q['epochs']} epochs with other jobs under "
            f"{q['other_cores_below']} cores ran at {common.fmt(q['frames_per_s'])} frames/s "
            f"(of {r['ours']['epochs']}; the targets use all epochs)")
    say(f"total {r['elapsed_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
