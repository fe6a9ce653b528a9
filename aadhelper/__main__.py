"""``python -m aadhelper``: the same as the ``aadhelper`` console script."""

import sys

from .cli import main

sys.exit(main())
