"""The one exception type users see: the CLI prints it as a single `error: ...` line."""


class AectlError(Exception):
    """An error caused by the input, the environment or a bundle, with a message meant for the user."""


# Signals that asked this process to stop (SIGINT/SIGTERM), recorded by whoever handled them, so the CLI can
# exit with the conventional status (130 for Ctrl-C, 143 for SIGTERM) after everything has been cleaned up.
received_signals: list[int] = []
