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


class OutputWriteError(OSError):
    """An output could not be written (full disk, no permission); nothing partial was left
    under its name. Not a :class:`DMENetError`: it stops the whole run (a tool does not go on
    with its next photo), and the command line prints it as one line too. ``errno``,
    ``strerror`` and ``filename`` (the output) are those of the failed write."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()
