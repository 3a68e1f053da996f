"""Errors meant for the user: each message says what was wrong and what to do instead."""


class ConjureError(ValueError):
    """Bad input or an unusable model."""


class ModelLoadError(ConjureError):
    """A model could not be found or loaded."""


class PromptTruncatedWarning(UserWarning):
    """A prompt was longer than the text encoder accepts and was cut."""
