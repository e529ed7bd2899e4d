#!/usr/bin/env python
"""Train V-Unet (VGG16 encoder) with the paper's two stages.

The command lives in lungseg/commands/train_vunet.py; installed, it is also ``lungseg-train-vunet``.
Run with --help for the options.
"""

import sys

from lungseg.commands.train_vunet import main

if __name__ == "__main__":
    sys.exit(main())
