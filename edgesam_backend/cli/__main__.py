"""``python -m edgesam_backend.cli``."""

import sys

from . import main

sys.exit(main())
