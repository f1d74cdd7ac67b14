"""`python -m weatherbench` (installed as `benchmark_system`)."""

import sys

from weatherbench.cli import main

sys.exit(main())
