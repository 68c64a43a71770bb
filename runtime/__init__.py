"""The torch-free runtime: bundles, onnxruntime sessions, entropy coding and the .aec container.

Only numpy, onnxruntime, constriction and Pillow are used here; nothing imports torch, train/ or export/.
"""
from aectl.runtime.bundle import Bundle, load_bundle
from aectl.runtime.codec import Codec, Decoder
from aectl.runtime.errors import AectlError

__all__ = ["AectlError", "Bundle", "Codec", "Decoder", "load_bundle"]
