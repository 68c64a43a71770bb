"""What the scripts in benchmarks/ share, so that they behave as aectl's commands do: --help shows the whole
module docstring (its first line alone was cut mid-sentence), arguments are checked before any measurement
(a --json folder that does not exist failed after minutes of timing), and errors end in one line, not a
traceback."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from aectl.runtime.errors import AectlError

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak-dev"


def parser(doc: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def at_least(low: int) -> Callable[[str], int]:
    """An int option's type that refuses values below `low` (rounds: the first is warm-up)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: give at least {low}")
        return value
    return parse


def output_file(text: str) -> Path:
    """A --json path whose folder exists, checked before the measurement."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{path.parent} is not a folder")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{path} is a folder")
    return path


def run(main: Callable[[], object]) -> None:
    """Run a script's main: an error (a bundle that is not one, too few photos...) is one line, exit 1."""
    try:
        main()
    except (AectlError, ValueError) as exc:  # ValueError: the metrics' own (an image too small for MS-SSIM...)
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
