"""``python -m arboris_nb.mockserver``: the child process of ``MockServer(process=True)``."""

import sys

from ._server import child_main

sys.exit(child_main())
