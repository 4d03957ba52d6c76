#!/usr/bin/env python
"""hv-tune entry point: ``python finetune.py --help`` lists the verbs."""

import sys

from hv_tune.cli import main

if __name__ == "__main__":
    sys.exit(main())
