"""The one exception type the CLI turns into a clear message instead of a traceback."""


class Vist2Error(ValueError):
    """Bad input or a bad file, explained in words a user can act on."""
