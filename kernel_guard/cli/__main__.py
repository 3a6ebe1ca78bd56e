"""``python -m kernel_guard.cli``: the ``kernel-guard`` command without its script."""

import sys

from . import main

sys.exit(main())
