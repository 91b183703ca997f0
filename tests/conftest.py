"""Make ``shared_support`` (helpers every test directory uses) importable.

pytest runs in importlib mode, where test modules cannot import their siblings; this
directory is put on ``sys.path`` once, and each subdirectory's conftest adds its own.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
