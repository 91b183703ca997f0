"""Does an installed plugin's declared ``kvcore`` requirement admit the running kvcore?"""

from __future__ import annotations

import importlib.metadata as md

from packaging.requirements import InvalidRequirement, Requirement
from packaging.version import InvalidVersion, Version

__all__ = ["incompatibility", "kvcore_version"]


def kvcore_version() -> str:
    """The running kvcore's version (from its installed metadata, else the package)."""
    try:
        return md.version("kvcore")
    except md.PackageNotFoundError:
        from kvcore import __version__

        return __version__


def incompatibility(distribution: str) -> str | None:
    """A sentence saying which kvcore ``distribution`` needs, or ``None`` when it fits."""
    try:
        requires = md.requires(distribution) or []
    except md.PackageNotFoundError:
        return None
    running = kvcore_version()
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.name.lower() != "kvcore" or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            ok = req.specifier.contains(Version(running), prereleases=True)
        except InvalidVersion:
            return None
        if not ok:
            return (
                f"{distribution} requires kvcore{req.specifier} but kvcore {running} is running; "
                f"install a release of {distribution} made for kvcore {running}, or a kvcore{req.specifier}"
            )
    return None
