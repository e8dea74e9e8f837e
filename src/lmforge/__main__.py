"""`python -m lmforge ...` runs the CLI (the same as the `lmforge` command)."""

import sys

from lmforge.cli import main

sys.exit(main())
