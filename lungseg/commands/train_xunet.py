"""Train X-Unet (plain U-Net): pre-training on salient objects, then k-fold fine-tuning on LUS.

Pre-training trains all layers on the pre-training set, gray salient-object images by default
(the paper: XPIE, 8000/2000, no augmentation; --salient DIR: any annotated set, a phantom's
frames too); or --pretrained starts from an earlier run's model. Fine-tuning trains a copy of the pre-trained model on each of k folds of LUS
frames, with the layers named by --freeze kept frozen.
"""

import sys

from lungseg.cli import RESUME_HINT, config_from_args, run_main, training_parser


def run(argv):
    """Parse ``argv`` and train; raises ``LungsegError`` on bad input (``main`` prints it)."""
    parser = training_parser("xunet", __doc__)
    args = parser.parse_args(argv)
    config = config_from_args("xunet", args, parser)

    from lungseg.training import run_training  # imports TensorFlow: after --help and option errors

    run_training(config, fold=args.fold, overwrite=args.overwrite)


def main(argv=None):
    """Entry point of ``lungseg-train-xunet`` and ``train_xunet.py``; returns the exit status."""
    return run_main(run, argv, resume_hint=RESUME_HINT)


if __name__ == "__main__":
    sys.exit(main())
