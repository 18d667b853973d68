"""``python -m graphrt.frontends.cli``: the ``graphrt`` command line."""

import sys

from graphrt.frontends.cli.main import main

sys.exit(main())
