"""``python -m kvmppc``."""

import sys

from kvmppc.cli import main

sys.exit(main())
