"""Score trained V-Unet and X-Unet runs: the paper's results table, artifact counts, figures.

Each RUN is a run folder written by train_vunet.py / train_xunet.py (its fold models are
scored on their own held-out folds) or a .keras model (needs --test). With --test DIR every
model is scored on the same fixed test frames, like the paper's 80-frame test list.
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
    parser.add_argument("--out", metavar="DIR", default="results", help="results folder")
    parser.add_argument("--batch-size", type=positive_int, default=20, help="frames per forward pass")
    parser.add_argument("--figure-frames", type=positive_int, default=4, help="frames in the overlay figure")
    parser.add_argument("--save-masks", action="store_true", help="also write every predicted mask as PNG")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)

    # NumPy, SciPy, OpenCV and matplotlib: after --help and option errors. Keras and TensorFlow
    # load later still, with the first model (lungseg.predict.load_model).
    from lungseg.report import evaluate

    evaluate(args.runs, args.out, test=args.test, batch_size=args.batch_size,
             n_frames=args.figure_frames, save_masks=args.save_masks)


def main(argv=None):
    """Entry point of ``lungseg-evaluate`` and ``evaluate.py``; returns the exit status."""
    return run_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
