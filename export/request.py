"""What an export is asked for, checked before torch, onnx or the checkpoint load: a mistyped option is refused
at once, not after seconds of imports (`aectl export` calls this first; export_bundle calls it again for
callers of the Python API)."""
from __future__ import annotations

from pathlib import Path

from aectl.runtime.bundle import MAX_CLASSES, PRECISIONS, check_output_folder
from aectl.runtime.errors import AectlError

# What the photos of --calibration are for, said when the folder is missing.
VARIANT_PHOTOS = "a reduced-precision decoder is checked on real photos"
CLASS_PHOTOS = "--entropy-classes fits its tables on real photos"


def given_folder(given: str | Path, option: str, why: str) -> Path:
    """A folder of real photos named on the command line (`option`); `why` says what it is for."""
    if not str(given):  # the CLI passes it as a string: Path("") is ".", which calibrated on the working folder
        raise AectlError(f'{option} "": give a folder')
    if not Path(given).is_dir():
        raise AectlError(f"{option} {given}: not a folder ({why})")
    return Path(given)


def check_export_request(source: str | Path, out_dir: str | Path, force: bool, precision: str, ort: bool,
                         calibration: str | Path | None, entropy_classes: int) -> None:
    """The options' own errors, and an output folder that is taken; what needs the checkpoint comes later."""
    if precision not in PRECISIONS:
        raise AectlError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if entropy_classes and not 2 <= entropy_classes <= MAX_CLASSES:
        raise AectlError(f"--entropy-classes {entropy_classes}: give 2..{MAX_CLASSES}, or 0 for none")
    if precision != "fp32" and ort:
        raise AectlError("--ort is only made for fp32 decoders; export the ORT format from an fp32 bundle")
    check_output_folder(Path(out_dir), force, Path(source))  # before the slow work; bundle_folder checks again
    if calibration is not None:
        if precision == "fp32" and not entropy_classes:  # it was ignored without a word
            raise AectlError("--calibration picks the photos of an fp16/int8 export or of --entropy-classes; "
                             "this export uses neither")
        given_folder(calibration, "--calibration", CLASS_PHOTOS if precision == "fp32" else VARIANT_PHOTOS)
