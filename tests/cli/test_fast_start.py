"""`import kvcore` and `kvcore plugins` do not import torch: the command answers at once."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys, io, contextlib
import kvcore
from kvcore._cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["plugins", "--json"])
print("torch" in sys.modules)
"""


def test_plugins_command_never_imports_torch() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr


def test_every_public_name_still_resolves() -> None:
    import kvcore

    assert all(getattr(kvcore, name) is not None for name in kvcore.__all__)
    assert set(kvcore.__all__) <= set(dir(kvcore))
