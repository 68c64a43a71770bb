"""The bundles shipped in the package load, pass their hash checks, and still reach the quality recorded in
their manifest on a kodak-dev image."""
import numpy as np
import pytest
from PIL import Image

from aectl.runtime import Codec
from aectl.runtime.metrics import bpp, psnr
from aectl.runtime.registry import shipped_bundles

SHIPPED = shipped_bundles()


def test_a_default_model_ships():
    assert SHIPPED, "no bundle under models/"


@pytest.mark.parametrize("bundle", SHIPPED, ids=[b.name for b in SHIPPED])
def test_shipped_bundle_round_trips_at_recorded_quality(bundle, kodak):
    codec = Codec(bundle, provider="cpu")
    for role in codec.bundle.manifest["files"]:
        codec.bundle.read(role)  # sha256 and self-containedness
    recorded = codec.bundle.manifest["evaluation"]["per_image"]["kodim01.png"]
    image = np.asarray(Image.open(kodak / "kodim01.png").convert("RGB"))
    data = codec.compress(image)
    decoded = np.asarray(codec.decompress(data))
    assert abs(psnr(image, decoded) - recorded["psnr"]) <= 0.5
    assert bpp(len(data), image.shape[1], image.shape[0]) == pytest.approx(recorded["bpp"], rel=0.01)
