"""Make ``hf_support`` (helpers shared by the transformers tests) importable.

pytest runs in importlib mode, where test modules cannot import their siblings; this
directory is put on ``sys.path`` under a module name no other test directory uses.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
