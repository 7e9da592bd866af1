"""``python -m iluvattnshun.sweep``: see ``iluvattnshun.sweep.cli``."""

import sys

from iluvattnshun.sweep.cli import main

sys.exit(main())
