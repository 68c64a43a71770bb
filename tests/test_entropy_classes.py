"""Classified entropy tables (export/entropy_classes.py): fitted on photos at export, they shrink files without
touching the pictures, and every symbol still round-trips exactly through the class map and escape paths."""
import json

import numpy as np
import pytest
from PIL import Image

from aectl.export.parity import verify_bundle
from aectl.runtime import Codec
from aectl.runtime.bundle import load_bundle
from aectl.runtime.entropy_coder import EntropyCoder, finish, new_decoder, new_encoder
from aectl.runtime.errors import AectlError
from test_cli import aectl


@pytest.fixture(scope="module")
def classified(trained, photos, tmp_path_factory):
    """The tiny factorized run exported with 4 classes fitted on the training photos, beside its plain bundle."""
    run, plain = trained["factorized"]
    out = tmp_path_factory.mktemp("classes") / "bundle"
    aectl("export", run, "-o", out, "--entropy-classes", 4, "--calibration", photos)
    return run, plain, out


def test_manifest_records_the_fitted_classes(classified, photos):
    run, plain, bundle = classified
    entropy = json.loads((bundle / "manifest.json").read_text())["entropy"]
    classes = entropy["classes"]
    assert 2 <= classes["count"] <= 4 and len(classes["map_cdfs"]) == classes["count"] + 1
    assert classes["fit"]["data"] == str(photos) and sum(classes["fit"]["usage"]) == classes["fit"]["positions"]
    assert min(classes["fit"]["usage"]) > 0, "a class nobody uses was kept"
    plain_entropy = json.loads((plain / "manifest.json").read_text())["entropy"]
    assert {k: v for k, v in entropy.items() if k != "classes"} == plain_entropy
    verify_bundle(bundle, run)  # the learned tables and networks are still the checkpoint's


def test_same_pictures_smaller_files_on_kodak(classified, kodak):
    _, plain, bundle = classified
    with_classes, without = Codec(bundle, provider="cpu"), Codec(plain, provider="cpu")
    sizes = []
    for name in ("kodim02.png", "kodim07.png", "kodim11.png"):
        image = np.asarray(Image.open(kodak / name).convert("RGB"))
        small, big = with_classes.compress(image), without.compress(image)
        assert np.array_equal(np.asarray(with_classes.decompress(small)), np.asarray(without.decompress(big)))
        sizes.append((len(small), len(big)))
    assert sum(s for s, _ in sizes) < sum(b for _, b in sizes), sizes


def test_tiled_image_round_trips(classified, photos):
    """Big images are coded tile by tile, each tile with its own class map."""
    _, plain, bundle = classified
    image = np.asarray(Image.open(photos / "003.png").convert("RGB"))
    image = np.concatenate([image, image[::-1]], axis=0)  # tall enough to be tiled
    codec = Codec(bundle, provider="cpu")
    data = codec.compress(image)
    assert np.array_equal(np.asarray(codec.decompress(data)),
                          np.asarray(Codec(plain, provider="cpu").decompress(Codec(plain, provider="cpu").compress(image))))


@pytest.mark.parametrize("version", [4, 3, 2, 1], ids=["v4", "v3", "v2", "v1"])
@pytest.mark.parametrize("kind", ["zeros", "random", "huge", "mixed"])
def test_symbols_decode_exactly_through_the_class_map(classified, kind, version):
    coder = EntropyCoder(load_bundle(classified[2]).entropy)
    rng = np.random.default_rng(3)
    shape = (coder.channels, 9, 13)  # over 64 positions: a class can carry group flags
    symbols = {
        "zeros": np.zeros(shape, np.int32),
        "random": rng.integers(-40, 40, shape).astype(np.int32),
        "huge": rng.integers(-2**31 + 1, 2**31 - 1, shape, dtype=np.int64).astype(np.int32),
        "mixed": np.where(rng.random(shape) < 0.05, 10**6, rng.integers(-2, 3, shape)).astype(np.int32),
    }[kind]
    enc = new_encoder(version)
    coder.encode_block(enc, symbols, version)
    coder.encode_block(enc, symbols[:, :1, :5], version)
    dec = new_decoder(finish(enc), version, [symbols.size, symbols[:, :1, :5].size])
    assert np.array_equal(coder.decode_block(dec, (9, 13), version), symbols)
    assert np.array_equal(coder.decode_block(dec, (1, 5), version), symbols[:, :1, :5])


@pytest.mark.parametrize("version", [4, 3])
def test_garbage_payload_is_a_clean_error(classified, version):
    coder = EntropyCoder(load_bundle(classified[2]).entropy)
    with pytest.raises(AectlError, match="corrupted payload"):
        for seed in range(20):  # random words decode to *something* until the classes or escapes run wild
            words = np.random.default_rng(seed).integers(0, 2**32, 8, dtype=np.uint64).astype("<u4").tobytes()
            coder.decode_block(new_decoder(words, version, [coder.channels * 40 * 60]), (40, 60), version)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(count=1), "count must be 2..64"),
    (lambda c: c["cdfs"].pop(), "count lists"),
    (lambda c: c["map_cdfs"].pop(), "count \\+ 1"),
    (lambda c: c["cdfs"][1][0].__setitem__(1, 0), "strictly increasing"),
])
def test_broken_class_tables_are_refused_at_load(classified, tmp_path, edit, message):
    manifest = json.loads((classified[2] / "manifest.json").read_text())
    edit(manifest["entropy"]["classes"])
    bundle = tmp_path / "b"
    bundle.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        (bundle / name).write_bytes((classified[2] / name).read_bytes())
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(AectlError, match=message):
        load_bundle(bundle)


def test_export_refuses_tables_the_runtime_would_refuse_before_fitting_classes(trained, photos, tmp_path,
                                                                             monkeypatch):
    """A review of the runtime's cap on table sizes: export made such a bundle whole (thousands of channels, 64
    classes), its manifest then refused at every use. The cap is lowered here to meet a test-sized model."""
    import aectl.export.onnx_export as onnx_export

    run, _ = trained["factorized"]
    monkeypatch.setattr(onnx_export, "MAX_TABLE_ENTRIES", 1000)
    with pytest.raises(AectlError, match=r"channels x tables of up to \d+ entries x 9 table sets pass the runtime's "
                                         r"1000 entries; give fewer --entropy-classes$"):
        onnx_export.export_bundle(run, tmp_path / "b", entropy_classes=8, calibration=photos, log=lambda *_: None)
    assert not (tmp_path / "b").exists()


def test_dense_models_cannot_take_classes(trained, tmp_path):
    """Each refusal says its own reason: the range's refusal read "(preset factorized does not have a fixed input
    size)", as if that were why 1 class was refused."""
    from aectl.export.onnx_export import export_bundle

    run, _ = trained["seed-dense"]
    proc = aectl("export", run, "-o", tmp_path / "b", "--entropy-classes", 8, check=False)
    assert proc.returncode == 1 and proc.stderr == "error: --entropy-classes 8: seed-dense takes a fixed input " \
        "size, and class maps are for fully convolutional models; give 0\n", proc.stderr
    for classes in (1, 65):
        with pytest.raises(AectlError, match=rf"^--entropy-classes {classes}: give 2\.\.64, or 0 for none$"):
            export_bundle(trained["factorized"][0], tmp_path / "b", entropy_classes=classes, log=lambda *_: None)
    assert not (tmp_path / "b").exists()


def test_verify_refuses_a_manifest_edited_after_export(classified, tmp_path):
    """verify said ok for a manifest whose classified tables were swapped (every file then failed to decode as
    "corrupted payload") or whose model_id was edited (the model's own files then refused): the graphs carry
    both stamps, and verify holds the manifest to them."""
    run, _, bundle = classified

    def edited(name, edit):
        copy = tmp_path / name
        copy.mkdir()
        for part in ("encoder.onnx", "decoder.onnx"):
            (copy / part).write_bytes((bundle / part).read_bytes())
        manifest = json.loads((bundle / "manifest.json").read_text())
        edit(manifest)
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return copy

    cdfs = lambda m: m["entropy"]["classes"]["cdfs"]  # noqa: E731
    swapped = edited("swapped", lambda m: cdfs(m).insert(0, cdfs(m).pop(1)))
    with pytest.raises(AectlError, match="the manifest's entropy tables are not the ones encoder.onnx was exported"):
        verify_bundle(swapped, run)
    renamed = edited("renamed", lambda m: m.update(model_id="0" * 32))
    with pytest.raises(AectlError, match=f"encoder.onnx belongs to model {load_bundle(bundle).model_id}, but the "
                                         f"manifest says {'0' * 32}"):
        verify_bundle(renamed, run)
    # The runtime holds them too, when a session starts (a security review: only verify did, so such a bundle
    # decoded its model's files wrong, or another model's, with exit 0)
    from aectl.runtime import Decoder

    latents = np.zeros((1, load_bundle(bundle).latent_rule["channels"], 1, 1), np.float32)
    with pytest.raises(AectlError, match="the manifest's entropy tables are not the ones decoder.onnx was exported"):
        Decoder(swapped, provider="cpu").decode(latents)
    with pytest.raises(AectlError, match=f"decoder.onnx belongs to model {load_bundle(bundle).model_id}, but the "
                                         f"manifest says {'0' * 32}"):
        Decoder(renamed, provider="cpu").decode(latents)
