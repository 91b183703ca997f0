"""Make ``parallel_support`` and ``parallel_worker`` importable (also in spawned ranks).

pytest runs in importlib mode, where test modules cannot import their siblings; this
directory is put on ``sys.path`` under module names no other test directory uses. Processes
started with the ``spawn`` method inherit ``sys.path``, so they import these modules too.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
