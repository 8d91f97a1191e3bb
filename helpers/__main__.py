"""``python -m helpers``: see `helpers.cli`."""

import sys

from helpers.cli import main

if __name__ == "__main__":  # spawned workers import this module: they must not run it
    sys.exit(main())
