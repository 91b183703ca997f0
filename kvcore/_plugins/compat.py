"""Does an installed plugin's declared ``kvcore`` requirement admit the running kvcore?"""

from __future__ import annotations

import functools
import importlib.metadata as md
from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

__all__ = ["incompatibility", "kvcore_version"]


@functools.cache  # the running version cannot change; looking it up scans sys.path
def kvcore_version() -> str:
    """The running kvcore's version (from its installed metadata, else the package)."""
    try:
        return md.version("kvcore")
    except md.PackageNotFoundError:
        from kvcore import __version__

        return __version__


def incompatibility(distribution: str, requires: Iterable[str] | None = None) -> str | None:
    """A sentence saying which kvcore ``distribution`` needs, or ``None`` when it fits.

    ``requires`` are the distribution's ``Requires-Dist`` lines (read from its metadata when
    omitted). Requirements that apply only to an extra or another platform are ignored.
    """
    if requires is None:
        try:
            requires = md.requires(distribution) or []
        except md.PackageNotFoundError:
            return None
    running = kvcore_version()
    for line in requires:
        req = _kvcore_requirement(line)
        if req is None:
            continue
        try:
            fits = req.specifier.contains(Version(running), prereleases=True)
        except InvalidVersion:
            return None
        if not fits:
            return (
                f"{distribution} requires kvcore{req.specifier} but kvcore {running} is running; "
                f"install a release of {distribution} made for kvcore {running} "
                f"(pip install --upgrade {distribution}), or a kvcore{req.specifier}"
            )
    return None


def _kvcore_requirement(line: str) -> Requirement | None:
    try:
        req = Requirement(line)
    except InvalidRequirement:
        return None
    if req.name.lower().replace("_", "-") != "kvcore":
        return None
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        return None
    return req
