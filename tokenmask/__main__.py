"""``python -m tokenmask``: same as the ``tokenmask`` command."""

import sys

from tokenmask.cli import main

sys.exit(main())
