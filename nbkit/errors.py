"""Exceptions that tell the user what went wrong and how to fix it.

Every user-facing error derives from `NbkitError`, so notebooks and the CLI can show
one clear line instead of a traceback wall.
"""


class NbkitError(Exception):
    """Base class for errors the user can fix."""


class ConfigError(NbkitError, ValueError):
    """A parameter has a bad value: the message names the field, the problem and the fix."""


class DataError(NbkitError):
    """Input data cannot be used (missing file, nothing valid left, ...)."""


class WorkspaceError(NbkitError):
    """An earlier stage's output is missing from the workspace."""
