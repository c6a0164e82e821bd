"""`python -m shared <command>`: the CLI over the same functions the Function App uses."""

import sys

from shared.cli import main

sys.exit(main())
