"""Errors that the command line reports as one line instead of a traceback."""


class UsageError(Exception):
    """A mistake of the caller: a wrong path, flag or input file. Shown to the user as one line."""
