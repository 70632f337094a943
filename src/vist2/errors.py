"""The one exception type the CLI turns into a clear message instead of a traceback."""


class Vist2Error(ValueError):
    """Bad input or a bad file, explained in words a user can act on."""


class ContextLengthError(Vist2Error):
    """A prompt and its new tokens need more positions than the backbone has."""

    def __init__(self, message: str, positions: int, response: int, limit: int):
        super().__init__(message)
        self.positions, self.response, self.limit = positions, response, limit
