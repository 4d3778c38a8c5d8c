"""Errors a user can act on: each names the file, line or label at fault."""

from __future__ import annotations


class TagcapError(Exception):
    """Base class; the CLI prints these without a traceback and exits non-zero."""


class DataError(TagcapError):
    """Bad dataset input. `where` is the file (and line or entry) at fault."""

    def __init__(self, where: str, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


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
