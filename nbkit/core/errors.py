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


class UnreadableFile(DataError):
    """A whole file cannot be read; collect reports it and goes on with the other sources."""

    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(f"{reason} — {fix}")
        self.reason, self.fix = reason, fix


class ChatTemplateError(DataError):
    """The model's chat template raised on a conversation (a role, key or tool layout it does not accept)."""


class WorkspaceError(NbkitError):
    """An earlier stage's output is missing from the workspace."""


class OutOfMemory(NbkitError):
    """Training ran out of memory; the message lists the settings to change."""


class NotebookFailed(NbkitError):
    """A cell raised in a headless run: the message names the notebook, the cell and the error."""


class ExportError(NbkitError):
    """The run cannot be written in the format asked for: the message says why and what works instead."""


class OllamaError(ExportError):
    """The model's chat template cannot be written as an Ollama TEMPLATE."""


class RestartRequired(NbkitError):
    """The kernel runs an older copy of a package than the one now installed."""
