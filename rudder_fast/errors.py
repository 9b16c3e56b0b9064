"""The exception tree.

Only :class:`InvalidEventError` ever reaches application code from an ``emit.*`` call: operational
trouble (disk full, spool over quota, spool unwritable) is counted as a drop, never raised.
"""

from __future__ import annotations


class RudderFastError(Exception):
    """Base class of every exception this package raises."""


class InvalidEventError(RudderFastError, ValueError):
    """An ``emit.*`` call was refused; ``field`` names the offending argument or value path.

    Nothing was written to the spool for the refused call.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidEventError], tuple[str, str]]:
        return (InvalidEventError, (self.field, self.reason))


class InvalidEventAssertionError(InvalidEventError, AssertionError):
    """A ``rudder_fast.analytics`` call was refused: also an ``AssertionError``, as rudder-sdk-python's.

    rudder-sdk-python raises ``AssertionError`` for bad input, so code written for it catches that;
    code written for rudder_fast catches :class:`InvalidEventError` (or ``ValueError``). This is all three.
    """

    def __reduce__(self) -> tuple[type[InvalidEventAssertionError], tuple[str, str]]:
        return (InvalidEventAssertionError, (self.field, self.reason))


class ConfigurationError(RudderFastError, ValueError):
    """A setting (command-line option, environment variable or argument) is unusable."""


class SpoolError(RudderFastError, OSError):
    """The spool directory cannot be used (wrong owner, permissions, file system, symlink)."""
