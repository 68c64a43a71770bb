"""BD-rate against hand-computed cases, and MS-SSIM's basic properties on a real image."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from aectl.runtime.bdrate import bd_rate, quality_at_rate
from aectl.runtime.metrics import ms_ssim, ms_ssim_db, pillow_encode


def test_a_constant_rate_ratio_is_its_bd_rate():
    psnr = [30.0, 32.0, 34.0, 36.0, 38.0]
    ref = [0.2, 0.35, 0.55, 0.8, 1.2]
    assert bd_rate(ref, psnr, [0.8 * r for r in ref], psnr) == pytest.approx(-20.0, abs=1e-9)
    assert bd_rate(ref, psnr, ref, psnr) == pytest.approx(0.0, abs=1e-9)


def test_log_linear_curves_over_their_overlap_only():
    # ref: ln r = D/10 on D in [30, 40]; test: ln r = 0.5 + D/20 on D in [34, 44]. They share D in [34, 40];
    # the mean of (0.5 + D/20 - D/10) over it is 0.5 - 37/20 = -1.35, so BD-rate = (e^-1.35 - 1) * 100.
    d_ref, d_test = np.linspace(30, 40, 5), np.linspace(34, 44, 6)
    result = bd_rate(np.exp(d_ref / 10), d_ref, np.exp(0.5 + d_test / 20), d_test)
    assert result == pytest.approx((math.exp(-1.35) - 1) * 100, abs=1e-6)  # -74.076...%
    assert result == pytest.approx(-74.0760, abs=1e-3)


def test_bd_rate_refuses_curves_it_cannot_compare():
    with pytest.raises(ValueError, match="four"):
        bd_rate([0.1, 0.2, 0.3], [30, 31, 32], [0.1, 0.2, 0.3, 0.4], [30, 31, 32, 33])
    with pytest.raises(ValueError, match="overlap"):
        bd_rate([0.1, 0.2, 0.3, 0.4], [20, 21, 22, 23], [0.1, 0.2, 0.3, 0.4], [30, 31, 32, 33])


def test_a_baseline_beside_the_models_rates_is_said_to_be_so():
    """A helper's review: a baseline of 11 points of which one lay next to the model's rates (a flat image JPEG
    codes in few bits) was said to need "at least four (rate, quality) points", which it had."""
    from aectl.runtime.evaluate import compare

    def curve(rates):
        return [{"setting": str(i), "bpp": r, "psnr": 30 + i, "ms_ssim_db": 15 + i} for i, r in enumerate(rates)]

    result = compare(curve([0.2, 0.3, 0.4, 0.5]), curve([1.0 + i / 2 for i in range(11)]))
    why = "only 1 of the baseline's 11 points lies at or next to the model's rates (0.200-0.500 bpp); it needs four"
    assert result["bd_rate_psnr"] is None and result["bd_rate_psnr_why"] == why
    assert result["bd_rate_ms_ssim"] is None and result["bd_rate_ms_ssim_why"] == why
    assert compare(curve([0.2, 0.3]), curve([0.1, 0.2, 0.3, 0.4]))["bd_rate_psnr_why"] == \
        "each curve needs at least four (rate, quality) points"  # the model's curve is the short one
    assert compare(curve([0.2, 0.3, 0.4, 0.5]), curve([0.1, 0.25, 0.35, 0.6]))["bd_rate_psnr"] is not None


def test_quality_at_rate_interpolates_in_log_rate():
    assert quality_at_rate(0.2, [0.1, 0.4], [30, 32]) == pytest.approx(31.0)
    assert quality_at_rate(0.05, [0.1, 0.4], [30, 32]) is None


def test_ms_ssim_is_one_for_identical_images_and_drops_with_jpeg_quality(kodak):
    image = np.asarray(Image.open(kodak / "kodim03.png").convert("RGB"))
    assert ms_ssim(image, image) == pytest.approx(1.0)
    scores = [ms_ssim(image, np.asarray(Image.open(io.BytesIO(pillow_encode(image, "jpeg", q))).convert("RGB")))
              for q in (5, 30, 90)]
    assert 0.8 < scores[0] < scores[1] < scores[2] < 1.0
    decoded = np.asarray(Image.open(io.BytesIO(pillow_encode(image, "jpeg", 30))).convert("RGB"))
    assert ms_ssim(decoded, image) == pytest.approx(scores[1], rel=1e-12)  # symmetric
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="176"):
        ms_ssim(image[:100], image[:100])


def test_eval_reads_images_as_the_codec_does(kodak, tmp_path):
    """aectl eval measures every codec against the pixels the codec compresses from a file: upright (EXIF
    rotation applied) and 16-bit grayscale scaled to 8 bits (a plain convert("RGB") clipped it to white)."""
    from aectl.runtime.evaluate import load_images

    photo = Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 200, 128))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    photo.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "a.png", exif=exif.tobytes())
    gray = np.asarray(photo.convert("L"))
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "b.png")
    (_, upright), (_, gray_rgb) = load_images(tmp_path)
    assert np.array_equal(upright, np.asarray(photo))
    assert np.array_equal(gray_rgb, np.repeat(gray[:, :, None], 3, axis=2))


def test_eval_refuses_a_bad_bundle_before_measuring_any(kodak, tmp_path):
    """`eval -m good -m bad` fails on the bad bundle before the good one is measured (it measured first)."""
    from aectl.runtime.errors import AectlError
    from aectl.runtime.evaluate import evaluate
    from aectl.runtime.registry import shipped_bundle

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{}")
    started = []
    with pytest.raises(AectlError):
        evaluate([shipped_bundle(1), bad], kodak, [], progress=started.append)
    assert started == []


def test_eval_names_a_point_by_its_bundle_where_the_manifest_has_no_quality(kodak, tmp_path):
    """`architecture` is descriptive: where it is not a section with an int quality, eval's point is named after
    the bundle folder (a list there ended eval in an internal AttributeError)."""
    import json
    import shutil

    from aectl.runtime.evaluate import measure_bundle, open_codec
    from aectl.runtime.registry import shipped_bundle

    image = np.asarray(Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 192, 176)))  # MS-SSIM's least
    for architecture in (["q1"], {"quality": "1"}, {"quality": 1}):
        bundle = tmp_path / "custom"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(shipped_bundle(1), bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["architecture"] = architecture
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        (row,) = measure_bundle(bundle, open_codec(bundle), [("kodim07", image)])
        assert row.setting == ("q1" if architecture == {"quality": 1} else "custom")


def test_eval_refuses_an_image_too_small_for_ms_ssim_by_name_before_measuring(kodak, tmp_path):
    """MS-SSIM needs 176 pixels a side; a smaller image in --data is named before any codec runs (it failed
    after the first model was measured, without saying which image)."""
    from aectl.runtime.errors import AectlError
    from aectl.runtime.evaluate import evaluate
    from aectl.runtime.registry import shipped_bundle

    data = tmp_path / "data"
    data.mkdir()
    Image.open(kodak / "kodim07.png").save(data / "a.png")
    Image.open(kodak / "kodim07.png").crop((0, 0, 300, 175)).save(data / "b.png")
    started = []
    with pytest.raises(AectlError, match=r"b\.png is 300x175.*176"):
        evaluate([shipped_bundle(1)], data, ["jpeg"], progress=started.append)
    assert started == []


def test_the_rd_plot_shows_every_model_point():
    """The panels kept 0-1.6 bpp whatever was measured, so a model coding at 2.5 bpp was off the plot, and the
    quality axis stretched to JPEG's 3 bpp points that were not shown."""
    from aectl.cli.rd_report import plot_view, rd_plot

    jpeg = [{"bpp": b, "psnr": 24.0 + 4 * b, "ms_ssim_db": 8.0 + 4 * b} for b in (0.2, 0.8, 1.4, 3.1, 6.0)]
    high = [{"bpp": b, "psnr": 30.0 + 3 * b, "ms_ssim_db": 14.0 + 3 * b} for b in (1.2, 2.5)]
    result = {"data": "d", "images": 1, "models": ["high"], "curves": {"high": high, "jpeg": jpeg}}
    right, low, top = plot_view(result, "psnr")
    assert 2.5 < right < 3.1
    assert low < 24.8 and 37.5 < top < 36.4 + 4  # JPEG's 3.1 and 6 bpp points are out of view
    assert plot_view({**result, "models": [], "curves": {"jpeg": jpeg}}, "psnr")[0] == 1.6
    lossless = {**result, "curves": {"high": high, "jpeg": jpeg[:2] + [{"bpp": 1.0, "psnr": math.inf,
                                                                         "ms_ssim_db": math.inf}]}}
    assert math.isfinite(plot_view(lossless, "ms_ssim_db")[2])
    assert rd_plot(result)[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_without_matplotlib_says_so_before_reading_any_image(tmp_path):
    """The RD plot needs the `eval` extra; without matplotlib eval said so only after measuring everything."""
    import subprocess
    import sys

    blocker = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'matplotlib':\n            raise ImportError('blocked: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n")
    run = ("sys.argv = ['aectl', 'eval', '--data', %r, '--baselines', 'jpeg', '-o', %r]\n"
           "from aectl.cli.main import main\nmain()\n") % (str(tmp_path / "no-such-folder"), str(tmp_path / "out"))
    proc = subprocess.run([sys.executable, "-c", blocker + run], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: the RD plot needs matplotlib: pip install 'aectl[eval]'"
    assert not (tmp_path / "out").exists()
