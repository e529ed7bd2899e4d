#!/usr/bin/env python
"""Train X-Unet (plain U-Net): pre-training on salient objects, then k-fold fine-tuning on LUS.

The command lives in lungseg/commands/train_xunet.py; installed, it is also ``lungseg-train-xunet``.
Run with --help for the options.
"""

import sys

from lungseg.commands.train_xunet import main

if __name__ == "__main__":
    sys.exit(main())
