"""`python -m accelgen` — the same as the `accelgen` command."""

import sys

from accelgen.cli import main

sys.exit(main())
