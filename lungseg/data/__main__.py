"""Command line: generate look-alike data sets, convert XPIE, or check a data set on disk.

    python -m lungseg.data lus --n 200 --seed 0 --out data/lus
    python -m lungseg.data lus --subjects 6 --probe convex --target line --out data/convex
    python -m lungseg.data salient --n 100 --seed 0 --out data/salient
    python -m lungseg.data xpie /path/to/XPIE --out data/xpie [--channel-order rgb]
    python -m lungseg.data check data/lus --size 256 256
    python -m lungseg.data check phantom --target rib_shadow --groups blocks:48 --crop auto
"""

import argparse
import sys
from collections import Counter

from lungseg.data.frames import Reading, load_frames
from lungseg.data.pairs import LAYOUTS, scan_pairs
from lungseg.data.synthetic import LUS_OPTIONS, PROBES, TARGETS, ensure_dataset
from lungseg.data.xpie import CHANNEL_ORDERS, DEFAULT_CHANNEL_ORDER, convert_xpie
from lungseg.cli import add_reading_options, positive_int, reading_from_args, run_main
from lungseg.errors import DataError

DEFAULTS = {"lus": (200, "data/lus"), "salient": (100, "data/salient")}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m lungseg.data",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python -m lungseg.data lus --n 200 --seed 0 --out data/lus\n"
            "  python -m lungseg.data lus --subjects 6 --probe convex --target line --out data/c\n"
            "  python -m lungseg.data salient --n 100 --out data/salient\n"
            "  python -m lungseg.data xpie /path/to/XPIE --out data/xpie\n"
            "  python -m lungseg.data check /path/to/LUS --size 256 256\n"
            "errors print one line each, 'error: FILE: problem', and exit with status 2"
        ),
        description=(
            "Generate look-alike data (LUS phantoms with rib masks, or gray salient-object\n"
            "composites) in the layouts the training scripts read, convert an XPIE download\n"
            "to that layout, or check a data set on disk. Generation is deterministic (same seed, same bytes), writes into a\n"
            "temporary folder renamed into place when complete, and reuses an existing set\n"
            "made with the same --n and --seed."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    helps = {
        "lus": "LUS phantoms: IMG/img_lung_pos2_5.tif + MASK/mask_lung_pos2_5.tif, 960 x 128",
        "salient": "salient composites: images/salient_0000.jpg + masks/salient_0000.png",
    }
    for kind, (n, out) in DEFAULTS.items():
        command = commands.add_parser(kind, help=helps[kind], description=helps[kind])
        command.add_argument("--n", type=int, default=n, help=f"number of frames (default {n})")
        command.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        command.add_argument("--out", default=out, help=f"output folder (default {out})")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
        if kind == "lus":
            command.add_argument(
                "--subjects", type=positive_int, metavar="K",
                help="draw K subjects, each with its own anatomy and machine settings and two "
                "probe positions, named lung_subj01_pos2_5 ... (group by subject with --groups "
                "'subj\\d+', which grouped splits do by default); default: the paper-like "
                "single volunteer, lung_pos2_5 ...",
            )
            command.add_argument(
                "--probe", choices=PROBES, default="linear",
                help="linear: 960 x 128 frames (depth samples x scan lines); convex: the same "
                "physics scan-converted to an 820 x 1124 sector, black outside the fan "
                "(default linear)",
            )
            command.add_argument(
                "--target", choices=TARGETS, default="rib",
                help="what the masks mark: rib, the rib's bright arc band; line, a thin line "
                "on the rib's surface (1-2 pixels at about 100 rows); shadow, the rib and its "
                "acoustic shadow down to the frame's bottom; the frames are the same "
                "(default rib)",
            )
    xpie = commands.add_parser(
        "xpie",
        help="convert XPIE (Images/*.jpg + Grounds/*.png) to gray images/ + 0/255 masks/",
        description="Convert an XPIE download to images/<name>.png (gray, lossless) and "
        "masks/<name>.png (0/255). Every problem is reported at once; nothing is written "
        "unless all pairs convert.",
    )
    xpie.add_argument("src", help="XPIE folder holding Images/ (colour photographs) and Grounds/")
    xpie.add_argument("--out", default="data/xpie", help="output folder (default data/xpie)")
    xpie.add_argument(
        "--channel-order", choices=CHANNEL_ORDERS, default=DEFAULT_CHANNEL_ORDER,
        help="paper: the authors' conversion, the default (cv2.imread's BGR pixels through "
        "COLOR_RGB2GRAY, red and blue weights exchanged); rgb: correct luminance (BGR2GRAY of "
        "OpenCV's BGR pixels)",
    )
    xpie.add_argument(
        "--size", type=positive_int, metavar="SIDE",
        help="stretch images and masks to SIDE x SIDE with nearest, as the authors did "
        "(default: keep each image's size; training resizes on loading)",
    )
    xpie.add_argument("--quiet", action="store_true", help="no progress bar")
    check = commands.add_parser(
        "check",
        help="find, read and check every image/mask pair of a data set",
        description="Report every missing, unreadable, mismatched or non-binary file at once "
        "(errors, exit status 2), and every entry of the image and mask folders that is not "
        "an image file (warnings).",
    )
    check.add_argument("root", help="data folder (IMG/ + MASK/, or images/ + masks/)")
    check.add_argument(
        "--layout", choices=LAYOUTS, default="auto", help="folder layout (default auto)"
    )
    check.add_argument("--groups", help="blocks:N, group regex or stem,group CSV file "
                       "(default: the subject, else LUS windows)")
    add_reading_options(check)
    check.add_argument(
        "--size", type=int, nargs=2, default=(256, 256), metavar=("HEIGHT", "WIDTH"),
        help="resize to this size while checking (default 256 256)",
    )
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args):
    if args.command == "xpie":
        n = convert_xpie(
            args.src, args.out, args.channel_order, args.size, progress=not args.quiet
        )
        print(f"{n} XPIE pairs converted to gray ({args.channel_order}) in {args.out}")
    elif args.command == "check":
        reading = reading_from_args(args)
        frames = check(args.root, args.layout, args.groups, tuple(args.size), progress=not args.quiet,
                       target=args.target, reading=reading)
        groups = Counter(frames.groups)
        rib_share = frames.masks.mean()
        placed = "cropping to the imaging sector and " if reading.crop == "auto" else ""
        placed += "padding" if reading.keep_aspect else "resizing"
        print(
            f"{args.root}: {len(frames)} pairs in {len(groups)} groups, all readable; "
            f"mask pixels {rib_share:.2%} of the total after {placed} to "
            f"{args.size[0]} x {args.size[1]}; frames {frames.depth}"
        )
    else:
        options = {key: getattr(args, key) for key in LUS_OPTIONS if hasattr(args, key)}
        out = ensure_dataset(
            args.command, args.out, args.n, args.seed, progress=not args.quiet, **options
        )
        extra = "".join(f", {key} {value}" for key, value in options.items()
                        if value != LUS_OPTIONS[key])
        print(f"{args.command} data set of {args.n} frames (seed {args.seed}{extra}) in {out}")


def check(root, layout="auto", groups=None, size=(256, 256), progress=False, target=None,
          reading=Reading()):
    """Find, read and check every pair of ``root`` in one pass; the ``FrameSet`` if all is well.

    Pairing problems (a missing mask, a misnamed file, ...) and content problems of the pairs
    found (unreadable files, size mismatches, non-binary masks, all masks empty) are raised
    together as one ``DataError``, pairing problems first. ``target`` and ``reading`` as for
    training (``find_pairs``, ``load_frames``).
    """
    pairs, problems = scan_pairs(root, layout=layout, groups=groups, target=target)
    frames = None
    if pairs:
        try:
            frames = load_frames(pairs, size, progress=progress, reading=reading)
        except DataError as error:
            problems = problems + error.problems
    if problems:
        raise DataError(problems)
    return frames


def main(argv=None):
    """Entry point; returns the exit status (2 with one ``error:`` line per problem)."""
    return run_main(lambda arguments: run(build_parser().parse_args(arguments)), argv)


if __name__ == "__main__":
    sys.exit(main())
