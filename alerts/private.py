"""Files only CalGuard's own user may read: the data directory (0700) and what it keeps
there - the SQLite log, spool segments, the audit key and the audit anchors (0600).

The log holds patients' readings and the key guards the audit chain: neither may be left
world-readable by a default umask. Directories and files are created with their mode set
explicitly (whatever the umask); a key found readable by others is tightened, with a
warning (a key others could read no longer proves anything). Everything here blocks:
call it at startup or in a worker thread.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "create_private_file", "private_dir", "tighten"]

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` as a directory; each directory created on the way is 0700."""
    path = path.expanduser()
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(directory, DIR_MODE)  # the umask may have taken bits the mode asked for
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return path


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists; True if it was created."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def tighten(path: Path, mode: int, what: str) -> None:
    """Take away the access of group and others from an existing ``path`` (loudly)."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        os.chmod(path, current & mode)
        log.warning(
            "%s %s was readable by others (mode %o): now %o", what, path, current, current & mode
        )
