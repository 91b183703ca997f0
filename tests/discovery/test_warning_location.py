"""Discovery warnings point at the caller, not at kvcore's internals."""

from __future__ import annotations

import pytest
from discovery_support import Site

import kvcore


def test_warning_points_at_the_calling_line(site: Site) -> None:
    site.plugin("broken", "import kvcore_dependency_that_is_not_installed\n")
    with pytest.warns(RuntimeWarning, match="broken") as caught:
        kvcore.get_plugin_manager()
    assert caught[0].filename == __file__
