#!/usr/bin/env python
"""Entry point for `accelerate launch scripts/train.py --config RECIPE.yaml [--set k=v ...]`.

Identical to `prefopt train`: same arguments, same code path (prefopt.cli).
"""

import sys

from prefopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
