"""Errors for a user's mistakes: the command line prints their message, never a traceback."""


class DMENetError(Exception):
    """A problem the user can fix (bad input, wrong layout, refused overwrite)."""


class DataError(DMENetError, ValueError):
    """Bad input data; the message names the file and the problem."""


class OutputExistsError(DMENetError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""
