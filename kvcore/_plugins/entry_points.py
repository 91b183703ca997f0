"""One cheap scan of the installed distributions for the entry points of one group.

``importlib.metadata.entry_points(group=...)`` builds a ``Distribution`` for every installed
distribution and parses every ``entry_points.txt`` in full, which costs tens of milliseconds
with hundreds of distributions installed. :func:`scan` returns exactly the same entry points:
it visits the same distributions in the same order (each ``sys.meta_path`` finder in turn;
for the standard path finder, each ``sys.path`` entry, ``*.dist-info`` / ``*.egg-info``
folders grouped by normalised name as ``importlib.metadata`` groups them), keeps the first
distribution of each normalised name, and parses only the ``entry_points.txt`` files whose
bytes contain the group's name, since a ``[group]`` header cannot exist without them.
Anything unusual (zip archives, eggs, upper-case suffixes, other finders, a monkeypatched
``importlib.metadata``) goes through ``importlib.metadata`` itself.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata as md
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["normalize", "scan"]

log = logging.getLogger("kvcore")

# What importlib.metadata looked like when kvcore was imported: tests (pluggy's among them)
# fake installed plugins by replacing these, and a replacement must be honoured.
_ORIGINAL = (md.distributions, md.entry_points, vars(md.Distribution)["discover"])

Candidate = tuple[str, "str | md.Distribution"]
"""A distribution's normalised name, and its metadata folder path or its Distribution."""


_SUFFIXES = (".dist-info", ".egg-info")
_SEPARATORS = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """A distribution name as ``importlib.metadata`` compares them (PEP 503, ``_`` joined)."""
    return _SEPARATORS.sub("_", name).lower()


def scan(group: str) -> list[md.EntryPoint]:
    """The entry points of ``group``, as ``importlib.metadata.entry_points(group=group)``."""
    if (md.distributions, md.entry_points, vars(md.Distribution)["discover"]) != _ORIGINAL:
        return _patched(group)
    needle = group.encode()
    seen: set[str] = set()
    found: list[md.EntryPoint] = []
    for key, source in _candidates():
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = source if isinstance(source, md.Distribution) else _mentioning(source, needle)
            if dist is not None:
                found.extend(dist.entry_points.select(group=group))
        except Exception as exc:  # noqa: BLE001 - one mangled install must not hide every plugin
            log.warning("skipping distribution %s while looking for %r plugins: %s: %s",
                        source, group, type(exc).__name__, exc)
    return found


def _patched(group: str) -> list[md.EntryPoint]:
    """Ask a replaced ``importlib.metadata`` in whichever style the replacement speaks."""
    try:
        return list(md.entry_points(group=group))
    except TypeError:  # a stand-in for the pre-3.10 API: entry_points() -> {group: [...]}
        found = md.entry_points()
    if hasattr(found, "select"):
        return list(found.select(group=group))
    return list(found.get(group, ())) if isinstance(found, dict) else []


def _mentioning(folder: str, needle: bytes) -> md.Distribution | None:
    """The distribution in ``folder`` if its ``entry_points.txt`` mentions ``needle``."""
    # os.open/os.read: most distributions have no entry_points.txt, and the others are
    # small; the buffered file objects of open() would cost more than the read itself.
    try:
        fd = os.open(os.path.join(folder, "entry_points.txt"), os.O_RDONLY)
    except OSError:  # no entry points (most distributions), or unreadable: importlib skips those too
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return md.PathDistribution(Path(folder)) if needle in b"".join(chunks) else None


def _candidates() -> Iterator[Candidate]:
    for finder in sys.meta_path:
        find = getattr(finder, "find_distributions", None)
        if find is None:
            continue
        if finder is importlib.machinery.PathFinder:
            for root in sys.path:
                yield from _in_path_entry(root)
        else:
            yield from _keyed(find(md.DistributionFinder.Context()))


def _in_path_entry(root: str) -> Iterator[Candidate]:
    try:
        children = os.listdir(root or ".")
    except (OSError, TypeError, ValueError):
        # A zip archive or a missing folder: let importlib.metadata read it.
        yield from _keyed(md.MetadataPathFinder.find_distributions(md.DistributionFinder.Context(path=[root])))
        return
    groups: dict[str, list[str]] = {}
    eggs: list[str] = []
    in_egg = os.path.basename(root).lower().endswith(".egg")
    for child in children:
        low = child.lower()
        if low.endswith(_SUFFIXES):
            groups.setdefault(normalize(low.rpartition(".")[0].partition("-")[0]), []).append(child)
        elif in_egg and low == "egg-info":
            eggs.append("EGG-INFO")
    # importlib.metadata's order: folders grouped by normalised name, then an egg's EGG-INFO.
    for key, group in groups.items():
        for child in group:
            folder = os.path.join(root, child)
            # importlib names a folder by its stem only when the suffix is exactly lower-case.
            yield (key, folder) if child.endswith(_SUFFIXES) else _from_metadata(folder)
    for child in eggs:
        yield _from_metadata(os.path.join(root, child))


def _from_metadata(folder: str) -> Candidate:
    return next(iter(_keyed([md.PathDistribution(Path(folder))])))


def _keyed(dists: Iterable[md.Distribution]) -> Iterator[Candidate]:
    for dist in dists:
        key = getattr(dist, "_normalized_name", None)
        yield (key if isinstance(key, str) else normalize(dist.name or "")), dist
