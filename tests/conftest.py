"""Shared fixtures: real images from ../shared/data, and real models trained for a few steps on them,
exported once per session through the same code path users run."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AECTL_TEST_DATA", ROOT.parent / "shared" / "data"))
PHOTOS = DATA / "photos"
KODAK = DATA / "kodak-dev"


def aectl_exe() -> str:
    """The installed console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "aectl"
    found = str(exe) if exe.exists() else shutil.which("aectl")
    assert found, "the aectl console script is not installed in this environment"
    return found


# Photos the tests train, calibrate and fit classes on: the first 12 of the data's photos/ (../shared/data's holds
# 49). Every training or calibrating process decodes its folder whole (all 49: 2-3 s a process, in dozens of
# processes), and a few steps of training take a few dozen crops.
TEST_PHOTOS = 12


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A folder holding copies of the first TEST_PHOTOS training photos (real photos, fewer of them)."""
    assert PHOTOS.is_dir(), f"training photos not found at {PHOTOS} (set AECTL_TEST_DATA)"
    from aectl.runtime.files import IMAGE_SUFFIXES

    found = sorted(p for p in PHOTOS.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    assert len(found) >= TEST_PHOTOS, f"{PHOTOS} holds {len(found)} photos; the tests need {TEST_PHOTOS}"
    folder = tmp_path_factory.mktemp("photos")
    for path in found[:TEST_PHOTOS]:
        shutil.copyfile(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def kodak() -> Path:
    assert KODAK.is_dir(), f"kodak-dev not found at {KODAK} (set AECTL_TEST_DATA)"
    return KODAK


# A few steps of real training per preset: enough for real weights, latents and fitted entropy tables.
TINY_RUNS = {
    "seed-conv": dict(steps=20, batch_size=8, fit_steps=40),
    "seed-dense": dict(steps=6, batch_size=8, fit_steps=20),
    "factorized": dict(steps=20, batch_size=4, channels=(16, 24), crop=64),
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, photos):
    """preset -> (run dir, bundle dir), trained on real photos and exported with parity checked."""
    from aectl.export.onnx_export import export_bundle
    from aectl.train.loop import TrainConfig, train

    root = tmp_path_factory.mktemp("models")
    out = {}
    for preset, opts in TINY_RUNS.items():
        run = root / f"run-{preset}"
        train(TrainConfig(preset=preset, data=str(photos), out=str(run), seed=0, threads=2, **opts),
              progress=False, log=lambda *_: None)
        bundle = root / f"bundle-{preset}"
        export_bundle(run, bundle, log=lambda *_: None)
        out[preset] = (run, bundle)
    return out


@pytest.fixture(scope="session")
def kodak_image(kodak) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(kodak / "kodim01.png").convert("RGB"))
