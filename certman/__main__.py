"""``python -m certman``: the same as the ``certman`` command."""

import sys

from certman.cli import main

sys.exit(main())
