"""Errors for a user's mistakes: the command line prints their message, never a traceback."""


class DMENetError(Exception):
    """A problem the user can fix (bad input, wrong layout, refused overwrite)."""


class DataError(DMENetError, ValueError):
    """Bad input data; the message names the file and the problem."""


class ConfigError(DMENetError, ValueError):
    """A bad option value or combination (config file, command line or constructor argument);
    the message names the option and the accepted values."""


class OutputExistsError(DMENetError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""
