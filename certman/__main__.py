import sys

from certman.cli import main

sys.exit(main())
