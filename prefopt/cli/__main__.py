"""``python -m prefopt.cli``."""

import sys

from prefopt.cli.main import main

sys.exit(main())
