#!/usr/bin/env python
"""Score trained V-Unet and X-Unet runs: the paper's results table, artifact counts, figures.

The command lives in lungseg/commands/evaluate.py; installed, it is also ``lungseg-evaluate``.
Run with --help for the options.
"""

import sys

from lungseg.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
