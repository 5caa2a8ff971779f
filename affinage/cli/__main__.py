"""`python -m affinage.cli`: the same as the `affinage` command."""

import sys

from affinage.cli import main

sys.exit(main())
