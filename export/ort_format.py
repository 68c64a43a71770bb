"""decoder.ort: the ORT format that onnxruntime's minimal and mobile builds load, made with onnxruntime's own
converter (onnxruntime.tools.convert_onnx_models_to_ort).

The converter optimises at the 'all' level by default, which bakes in layouts for the converting machine
(NCHWc on x86); we ask for the portable 'extended' level, and the loading device optimises further itself.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from pathlib import Path

from aectl.runtime.errors import AectlError

LEVEL = "extended"


def convert_to_ort(onnx_path: Path, ort_path: Path) -> None:
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory() as work:
        src = Path(work) / "decoder.onnx"
        shutil.copyfile(onnx_path, src)
        previous = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
        os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = LEVEL
        quiet = logging.getLogger("ort_format_model.utils")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                convert_onnx_models_to_ort(src, output_dir=Path(work) / "out",
                                           optimization_styles=[OptimizationStyle.Fixed])
        except Exception as exc:
            raise AectlError(f"ORT format conversion failed: {exc}") from None
        finally:
            quiet.setLevel(level)
            if previous is None:
                os.environ.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)
            else:
                os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = previous
        produced = sorted((Path(work) / "out").rglob("*.ort"))
        if len(produced) != 1:
            raise AectlError(f"ORT format conversion produced {len(produced)} files, expected one")
        shutil.copyfile(produced[0], ort_path)
