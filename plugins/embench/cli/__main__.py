"""`python -m embench.cli`."""

import sys

from embench.cli import main

sys.exit(main())
