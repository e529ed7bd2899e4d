"""Train V-Unet (VGG16 encoder) with the paper's two stages.

Stage 1 trains the decoder with the ImageNet VGG16 encoder frozen on an 80/20 hold-out of the
LUS frames; stage 2 fine-tunes every layer of a copy of the stage-1 model on each of k folds.
"""

import sys

from lungseg.cli import RESUME_HINT, config_from_args, run_main, training_parser


def run(argv):
    """Parse ``argv`` and train; raises ``LungsegError`` on bad input (``main`` prints it)."""
    parser = training_parser("vunet", __doc__)
    args = parser.parse_args(argv)
    config = config_from_args("vunet", args, parser)

    from lungseg.training import run_training  # imports TensorFlow: after --help and option errors

    run_training(config, fold=args.fold, overwrite=args.overwrite)


def main(argv=None):
    """Entry point of ``lungseg-train-vunet`` and ``train_vunet.py``; returns the exit status."""
    return run_main(run, argv, resume_hint=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
