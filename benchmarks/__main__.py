"""``python -m benchmarks``: run every benchmark and rebuild ``results/TABLE.md``."""

import sys

from benchmarks.run_all import main

sys.exit(main())
