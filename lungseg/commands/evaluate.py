"""Score trained V-Unet and X-Unet runs: the paper's results table, artifact counts, figures.

Each RUN is a run folder written by train_vunet.py / train_xunet.py (its fold models are
scored on their own held-out folds) or a .keras model (needs --test). With --test DIR every
model is scored on the same frames of a separate folder; with --test-list CSV on named frames
of its run's pool, as the paper measured (its Default_testset.csv is read as it is).
"""

import argparse
import sys

from lungseg.cli import positive_int, run_main


def run(argv):
    """Parse ``argv`` and score; raises ``LungsegError`` on bad input (``main`` prints it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders or .keras files")
    parser.add_argument("--test", metavar="DIR", help="score every model on this fixed test set "
                        "(IMG/ + MASK/, images/ + masks/)")
    parser.add_argument("--test-list", metavar="CSV", help="score every model on these frames of its "
                        "run's pool, flipped copies included (<name>_flipped), as the paper's "
                        "Default_testset.csv, which is read as it is; reports how many of them each "
                        "model trained on")
    parser.add_argument("--out", metavar="DIR", default="results", help="results folder")
    parser.add_argument("--batch-size", type=positive_int, default=20, help="frames per forward pass")
    parser.add_argument("--figure-frames", type=positive_int, default=4, help="frames in the overlay figure")
    parser.add_argument("--save-masks", action="store_true", help="also write every predicted mask as PNG")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    # NumPy, SciPy, OpenCV and matplotlib: after --help and option errors. Keras and TensorFlow
    # load later still, with the first model (lungseg.predict.load_model).
    from lungseg.report import evaluate

    evaluate(args.runs, args.out, test=args.test, test_list=args.test_list, batch_size=args.batch_size,
             n_frames=args.figure_frames, save_masks=args.save_masks)


def main(argv=None):
    """Entry point of ``lungseg-evaluate`` and ``evaluate.py``; returns the exit status."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
