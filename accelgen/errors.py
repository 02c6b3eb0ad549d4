"""The errors accelgen shows to its users.

Every error a user can cause (a bad model file, an unsupported layer, a bad argument) is an
`AccelgenError`: the CLI prints its message as one line, with no traceback, and exits with its
`exit_code`. Anything else that escapes is a bug in accelgen and keeps its traceback.
"""

from __future__ import annotations


class AccelgenError(Exception):
    """A user-facing error. `str(err)` is one line naming the cause and what to do."""

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        # one line, always: a multi-line message would break the CLI's one-line contract
        super().__init__(" ".join(str(message).split()))


class UsageError(AccelgenError):
    """A bad command-line argument or input file (wrong shape, missing file, bad value)."""


class ModelFileError(AccelgenError):
    """The model file is unreadable, truncated, malformed, or internally inconsistent."""


class UnsupportedError(AccelgenError):
    """The model uses an operator, attribute or layout accelgen does not implement."""


class ShapeError(AccelgenError):
    """A tensor shape is dynamic, unknown, or inconsistent."""


class NotBuiltYet(AccelgenError):
    """A pipeline stage that this version of accelgen does not have yet."""

    exit_code = 3
