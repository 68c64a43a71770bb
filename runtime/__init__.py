"""The torch-free runtime: bundles, onnxruntime sessions, entropy coding and the .aec container.

Only numpy, onnxruntime, constriction and Pillow are used here; nothing imports torch, train/ or export/.
The public names are imported on first use, so `import aectl.runtime.errors` (the CLI's start-up) stays cheap.
"""
from aectl.runtime.errors import AectlError, PixelLimitError

__all__ = ["AectlError", "PixelLimitError", "Bundle", "Codec", "Decoder", "load_bundle", "container"]

_LAZY = {"Bundle": "aectl.runtime.bundle", "load_bundle": "aectl.runtime.bundle", "Codec": "aectl.runtime.codec",
         "Decoder": "aectl.runtime.codec", "container": "aectl.runtime.container"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name])
        return module if name == "container" else getattr(module, name)
    raise AttributeError(f"module 'aectl.runtime' has no attribute {name!r}")
