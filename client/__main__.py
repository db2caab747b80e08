"""`python -m client run --url URL --scenarios ... --out result.json`."""

import sys

from client.cli import main

sys.exit(main())
