"""Import the plugin from the checkout when it is not pip-installed (``make test``'s venv).

Its folder is not put on ``sys.path``: a ``kvcore_acme.egg-info`` left there by an editable
install (``make test-vllm``) would make every test's plugin discovery find it.
"""

import importlib.util
import sys
from pathlib import Path

try:
    import kvcore_acme  # noqa: F401 - installed: use it as installed
except ImportError:
    package = Path(__file__).resolve().parents[1] / "kvcore_acme"
    spec = importlib.util.spec_from_file_location("kvcore_acme", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kvcore_acme"] = module
    spec.loader.exec_module(module)
