"""``python -m darkknowledge``: the command line."""

import sys

from darkknowledge.cli.main import main

sys.exit(main())
