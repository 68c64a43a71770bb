"""The one exception type users see: the CLI prints it as a single `error: ...` line."""
import contextlib
import contextvars
import numbers


class AectlError(Exception):
    """An error caused by the input, the environment or a bundle, with a message meant for the user."""


class PixelLimitError(AectlError):
    """An image larger than the caller's pixel limit (as Pillow's DecompressionBombError is). `reason` is the
    message without its hint to raise that limit: a service's client cannot raise it, its operator can
    (examples/edge_client.py told clients to "raise max_pixels")."""

    def __init__(self, reason: str, hint: str = ""):
        super().__init__(f"{reason}{hint}")
        self.reason = reason


# Whether the caller is aectl's command line (set by cli/main.py around a command), so that messages name an
# argument as the caller gave it: `threads=0` to a Python caller, `--threads 0` on the command line.
_ON_COMMAND_LINE = contextvars.ContextVar("aectl_on_command_line", default=False)
_SHORT_FLAGS = {"bundle": "-m", "quality": "-q"}  # the CLI's names for Codec's bundle and shipped_bundle's quality


@contextlib.contextmanager
def command_line():
    """Messages raised inside name arguments as the CLI's flags."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)


def on_command_line() -> bool:
    return _ON_COMMAND_LINE.get()


_UNSET = object()


def option(name: str, value=_UNSET) -> str:
    """A parameter (with its value) as the caller knows it: `max_pixels`, `threads=0`, `force=True` from Python;
    `--max-pixels`, `--threads 0`, `--force` on the command line. Library callers were told to raise
    --max-pixels or pass -m, options they do not have."""
    if not on_command_line():
        return name if value is _UNSET else f"{name}={value!r}"
    flag = _SHORT_FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if value is _UNSET or value is True else f"{flag} {value}"


def is_whole_number(value) -> bool:
    """An int or a numpy integer, not a bool: `h * w` of an array's shape is a numpy int and was refused as
    "give a whole number"; True is an int to Python but no count."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# Signals that asked this process to stop (SIGINT/SIGTERM), recorded by whoever handled them, so the CLI can
# exit with the conventional status (130 for Ctrl-C, 143 for SIGTERM) after everything has been cleaned up.
received_signals: list[int] = []


def one_line(message, limit: int | None = None) -> str:
    """A message as one line: line breaks (in a library's message, or in a file name) become one space, other
    spaces stay as they are (a name `my  photo.png` is named as it is). Past `limit` characters it loses its
    middle, not its end, where the reason usually is (a path past PATH_MAX, cut at its end, hid "File name too
    long")."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())  # spaces within stay
    return line if limit is None or len(line) <= limit else f"{line[:limit // 2]} ... {line[-(limit // 2):]}"


def exists_error(path) -> AectlError:
    """The refusal of an output file that is already there (without force), in one wording everywhere."""
    return AectlError(f"{path} exists; pass {option('force', True)} to overwrite")


TRAIN_MODULES = ("torch", "onnx", "onnxscript")  # what the [train] extra installs; the runtime needs none of them


def require_extra(*names: str) -> None:
    """The ModuleNotFoundError that missing_extra words, raised before a command that needs the [train] extra
    does any work: `train` checks its options without torch (a mistyped one is refused at once), so an install
    without torch printed train's notes first and failed after them. find_spec looks, it does not import."""
    import importlib.util

    for name in names:
        if importlib.util.find_spec(name) is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one line for a command that needs the [train] extra where it is not installed (aectl's commands and
    the recipes say it alike), or None for any other missing module: a bug, not the install."""
    if exc.name not in TRAIN_MODULES:
        return None
    return f"this command needs {exc.name}, which is not installed: pip install 'aectl[train]'"
