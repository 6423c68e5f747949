"""`python -m specdecode.cli`."""

import sys

from . import main

sys.exit(main())
