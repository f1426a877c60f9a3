"""Errors a user can act on.

Every failure caused by input (a file, a parameter) raises :class:`LmidError` with a message that
names the offending file or key and what is wrong with it; the CLI prints it without a traceback
and exits with status 2.
"""

from __future__ import annotations


class LmidError(RuntimeError):
    """An error caused by the user's data or parameters (not a bug in lmid)."""


class InputFileError(LmidError):
    """A file on disk cannot be used; the message starts with its path."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # rebuilt from both parts when a worker process sends it back
        return type(self), (self.path, self.problem)


class ParamsError(LmidError):
    """params.yaml (or a preset) is invalid; the message names the key."""
