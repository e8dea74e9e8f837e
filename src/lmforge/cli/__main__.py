"""`python -m lmforge.cli ...` (and `torchrun -m lmforge.cli ...`) runs the CLI."""

import sys

from lmforge.cli import main

sys.exit(main())
