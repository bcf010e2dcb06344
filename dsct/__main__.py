"""``python -m dsct``."""

import sys

from .cli import main

sys.exit(main())
