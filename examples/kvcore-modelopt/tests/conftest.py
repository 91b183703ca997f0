"""Make the plugin (when not pip-installed) and ``modelopt_checkpoints`` importable.

pytest may run in importlib mode, where test modules cannot import their siblings.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import kvcore_modelopt  # noqa: F401 - installed: use it as installed
except ImportError:
    sys.path.insert(0, str(HERE.parent))
