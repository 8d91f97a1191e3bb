"""Download SONICS and/or GTZAN with kagglehub and write a manifest (same code as the CLI).

    python download_dataset.py --dataset sonics+gtzan --out data --limit 2000

See ``python -m helpers download --help``; this script is that command under its own name.
"""

import sys

from helpers.cli import main

if __name__ == "__main__":
    sys.exit(main(["download", *sys.argv[1:]]))
