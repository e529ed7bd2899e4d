"""Score trained V-Unet and X-Unet runs: the paper's results table, artifact counts, figures.

Each RUN is a run folder written by train_vunet.py / train_xunet.py (its fold models are
scored on their own held-out folds) or a .keras model (needs --test). With --test DIR every
model is scored on the same frames of a separate folder; with --test-list CSV on named frames
of its run's pool, as the paper measured (its Default_testset.csv is read as it is).
Per-image metrics are measured at each frame's own size (--resolution model: the model's
input size), in mm too with --spacing. --masks DIR scores a folder of masks made by another
tool against --test, without a model. --ensemble, --tta and --min-size / --keep-largest score
every run a second time as lungseg-predict would predict with them (docs/inference.md).
"""

import argparse
import sys

from lungseg.cli import non_negative_int, positive_int, run_main, sample_value, share
from lungseg.config import TTA_CHOICES


def build_parser():
    """The options of ``evaluate.py`` / ``lungseg-evaluate``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN", help="run folders or .keras files")
    parser.add_argument("--test", metavar="DIR", help="score every model on this fixed test set "
                        "(IMG/ + MASK/, images/ + masks/)")
    parser.add_argument("--test-list", metavar="CSV", help="score every model on these frames of its "
                        "run's pool, flipped copies included (<name>_flipped), as the paper's "
                        "Default_testset.csv, which is read as it is; reports how many of them each "
                        "model trained on")
    parser.add_argument("--out", metavar="DIR", default="results", help="results folder, written "
                        "whole and renamed into place (an earlier results folder is replaced; "
                        "never a run folder or one inside the inputs)")
    parser.add_argument("--batch-size", type=positive_int, default=20, help="frames per forward pass")
    parser.add_argument("--figure-frames", type=positive_int, default=4, help="frames in the overlay figure")
    parser.add_argument("--save-masks", action="store_true", help="also write every predicted mask as PNG")
    parser.add_argument("--masks", metavar="DIR", action="append", default=[],
                        help="a folder of predicted masks (<name>.png, <name>_mask.png or mask_<name>.png, "
                        "or those of the image file's stem: img_<name>_mask.png as lungseg-predict "
                        "writes) to score against --test without a model; repeatable")
    parser.add_argument("--target", metavar="NAME", help="read --test's masks from masks/NAME/ "
                        "(default: the run's --target, else masks/ itself)")
    parser.add_argument("--mask-threshold", type=share, metavar="X", help="a --test mask pixel is "
                        "foreground above X times the mask's level (default: the run's, else 0.5)")
    parser.add_argument("--max-value", type=sample_value, metavar="N", help="the largest value of "
                        "16-bit --test frames, e.g. 4095 (default: the run's, else stated or inferred)")
    parser.add_argument("--resolution", choices=("native", "model"), default="native",
                        help="per-image metrics at each frame's own size or at the model's input size")
    parser.add_argument("--spacing", metavar="MM|ROWxCOL", help="pixel spacing in mm of the frames at "
                        "their own size: HD95 and ASSD in mm too")
    parser.add_argument("--ensemble", action="store_true", help="also score each run's fold ensemble "
                        "(the mean of its fold models) as one model; needs --test")
    parser.add_argument("--tta", choices=TTA_CHOICES, default="none",
                        help="also score with flip test-time augmentation")
    parser.add_argument("--min-size", type=non_negative_int, default=0, metavar="PX",
                        help="also score with predicted components under PX pixels removed")
    parser.add_argument("--keep-largest", type=positive_int, metavar="N",
                        help="also score keeping only the N largest predicted components")
    parser.add_argument("--allow-partial", action="store_true",
                        help="score an unfinished run's finished folds (default: refuse, naming "
                        "the missing folds)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    return parser


def run(argv):
    """Parse ``argv`` and score; raises ``LungsegError`` on bad input (``main`` prints it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.runs and not args.masks:
        parser.error("give at least one RUN or --masks DIR")
    spacing = None
    if args.spacing:
        from lungseg.commands.predict import spacing_option

        try:
            spacing = spacing_option(args.spacing)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--spacing: {error}")

    from lungseg.postprocess import PostProcess
    from lungseg.report import PredictionOptions, evaluate

    options = PredictionOptions(ensemble=args.ensemble, tta=args.tta,
                                post=PostProcess(args.min_size, args.keep_largest))
    evaluate(args.runs, args.out, test=args.test, test_list=args.test_list, batch_size=args.batch_size,
             n_frames=args.figure_frames, save_masks=args.save_masks, resolution=args.resolution,
             spacing=spacing, options=options, masks=args.masks, target=args.target,
             mask_threshold=args.mask_threshold, max_value=args.max_value,
             allow_partial=args.allow_partial)


def main(argv=None):
    """Entry point of ``lungseg-evaluate`` and ``evaluate.py``; returns the exit status."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
