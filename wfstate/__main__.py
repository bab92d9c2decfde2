"""``python -m wfstate``."""

import sys

from wfstate.cli import main

sys.exit(main())
