"""Errors a user can act on: each names the file, line or label at fault."""

from __future__ import annotations

import errno


class TagcapError(Exception):
    """Base class; the CLI prints these without a traceback and exits non-zero."""


class DataError(TagcapError):
    """Bad dataset input. `where` is the file (and line or entry) at fault."""

    def __init__(self, where: str, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class ImageTooLargeError(DataError):
    """An image over the pixel limit: not broken, refused for its size (`serve` answers 413, not 415)."""


class CacheMismatchError(TagcapError):
    """A feature cache exists but was built from other inputs."""


class CheckpointError(TagcapError):
    """A checkpoint directory is missing, incomplete or inconsistent."""


class ConfigError(TagcapError, ValueError):
    """A recipe or option names something that does not exist (a loss, a rule, a training option)."""


class LibraryError(TagcapError):
    """A photo library's SQLite file failed under a command: damaged, locked or unreadable."""


class MissingExtra(TagcapError):
    """An optional part of tagcap whose dependencies are not installed; says what to install."""


def require_extra(module: str, extra: str, what: str):
    """Import `module`, or raise MissingExtra naming the `pip install` that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(f"{what} needs the {extra!r} extra ({module} is not installed): "
                           f"pip install 'tagcap[{extra}]'") from None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; over the user's quota
FORBIDDEN = (errno.EROFS, errno.EACCES, errno.EPERM)  # a read-only file system; no permission


def machine_fault(e: BaseException) -> str | None:
    """What to tell the user when `e` is the machine refusing a file (a full disk, a read-only file
    system, no permission), naming the file (for a copy or a rename, where it was going); None for
    any other error, which stays a traceback."""
    if not isinstance(e, OSError) or e.errno not in DISK_FULL + FORBIDDEN:
        return None
    where = e.filename2 or e.filename or "a file being written"
    if e.errno in FORBIDDEN:
        return f"{where}: {e.strerror}"
    return (f"{where}: {e.strerror}. Free some space and run the command again: extract, index, fit and bench "
            "go on from what they had saved, predict does with --resume")
