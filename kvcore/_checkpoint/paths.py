"""OS-level failures on checkpoint paths, turned into ``CheckpointError``s in one place.

Reading a checkpoint touches the file system in many spots (``stat``, ``open``, ``resolve``,
``glob``); any of them can fail for reasons that have nothing to do with the checkpoint's
format: no permission, a name longer than the file system allows, a symlink loop, an I/O
error. :func:`path_error` words each as a ``CheckpointError`` naming the path and what to
do; :func:`resolve` makes a symlink loop an ``OSError`` like the others (Python 3.11's
``Path.resolve`` raises ``RuntimeError``); :func:`regular_file` tells a missing file from
something else standing in its place.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kvcore._errors import CheckpointError

__all__ = ["describe", "path_error", "regular_file", "resolve"]

_NO_ACCESS = "kvcore may not read it: fix its permissions (chmod, chown) or load as a user who may read it"
ADVICE = {
    errno.EACCES: _NO_ACCESS,
    errno.EPERM: _NO_ACCESS,
    errno.ENAMETOOLONG: "a name in the path is longer than the file system allows (usually 255 bytes): shorten it",
    errno.ELOOP: "a symbolic link in the path is a loop: replace it with the file or directory it should point to",
    errno.ENOENT: "it does not exist: check the path",
    errno.ENOTDIR: "a component of the path is not a directory: check the path",
    errno.EIO: "the storage reported an I/O error: check the disk or network file system, then load again",
}


def path_error(exc: OSError, path: object) -> CheckpointError:
    """A ``CheckpointError`` for ``exc``, raised while reading ``path`` (or ``exc.filename``)."""
    where = exc.filename if exc.filename is not None else path
    where = os.fsdecode(where) if isinstance(where, bytes | str | os.PathLike) else str(where)
    advice = ADVICE.get(exc.errno or 0, "check that the path is right and the file system readable, then try again")
    return CheckpointError(f"cannot read {where!r}: {exc.strerror or exc}; {advice}")


def resolve(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop raised as ``OSError(ELOOP)`` on every Python."""
    try:
        return path.resolve()
    except RuntimeError as exc:  # Python < 3.13: "Symlink loop from ..."
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from exc


def describe(path: Path) -> str | None:
    """What stands at ``path`` if it is not a regular file (``None`` when it is one or nothing is there)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
            return f"a symbolic link to {os.readlink(path)!r}, which does not exist (dangling)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    return "not a regular file (a socket or device)"


def regular_file(path: Path, what: str) -> bool:
    """Whether ``path`` is a regular file: ``False`` when nothing is there at all.

    Anything else in its place (a directory, a FIFO, a dangling symlink, a symlink loop) is a
    ``CheckpointError`` naming it: treating it as absent would silently change what loads
    (a quantized checkpoint read as unquantized, say). ``what`` says what the file should be.
    """
    other = describe(path)
    if other is not None:
        raise CheckpointError(f"{path} is {other}, not a regular file ({what}); replace it with the file itself")
    return os.path.lexists(path)
