"""``python -m calguard``: the same as the ``calguard`` command."""

import sys

from calguard.cli import main

sys.exit(main())
