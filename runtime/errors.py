"""The one exception type users see: the CLI prints it as a single `error: ...` line."""


class AectlError(Exception):
    """An error caused by the input, the environment or a bundle, with a message meant for the user."""
