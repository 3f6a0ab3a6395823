"""Errors whose message is written for the person who caused them."""


class CasebookError(Exception):
    """A refusal with a message fit to show to the user as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(CasebookError):
    """What was typed cannot be accepted; nothing was stored."""


class AlreadyExists(CasebookError):
    """The thing to create exists already."""


class NotFound(CasebookError):
    """No such thing, or not the signed-in clinician's to see (the two are not told apart)."""
