"""Import ``kvcore_vllm`` from the checkout when it is not pip-installed (``make test``'s venv).

Its folder is not put on ``sys.path``, so a ``kvcore_vllm.egg-info`` left there by an editable
install is not seen as an installed distribution.
"""

import importlib.util
import sys
from pathlib import Path

try:
    import kvcore_vllm  # noqa: F401 - installed: use it as installed
except ImportError:
    package = Path(__file__).resolve().parents[1] / "kvcore_vllm"
    spec = importlib.util.spec_from_file_location("kvcore_vllm", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["kvcore_vllm"] = module
    spec.loader.exec_module(module)
