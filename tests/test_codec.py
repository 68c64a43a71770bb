"""The codec end to end on real images: bitstreams, the container's defences, any size and mode."""
import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from aectl.runtime import Codec, container, load_bundle, tiling
from aectl.runtime.entropy_coder import (STREAM_SYMBOLS, ChannelTables, EntropyCoder, finish, new_decoder, new_encoder,
                                        stream_spans, trim)
from aectl.runtime.errors import AectlError
from aectl.train.checkpoint import build_from_checkpoint, load_checkpoint
from conftest import PHOTOS, ROOT, aectl_exe


def torch_reference(run, image: np.ndarray, codec: Codec) -> tuple[np.ndarray, np.ndarray]:
    """What the torch model reconstructs with the codec's padding/tiling: (uint8 image, symbols)."""
    model, _ = build_from_checkpoint(load_checkpoint(run))
    h, w = image.shape[:2]
    th, tw = tiling.choose_tile_size(h, w, codec.stride, codec.fixed_size)
    out = np.empty_like(image)
    all_symbols = []
    for t in tiling.plan(h, w, th, tw, codec.stride, codec.fixed_size):
        x = torch.from_numpy(tiling.cut(image, t)[None])
        with torch.no_grad():
            symbols = model.quantize(model.encode(x))
            decoded = model.decode(model.dequantize(symbols)).clamp(0, 1).numpy()[0]
        tiling.paste(out, decoded, t)
        all_symbols.append(symbols.numpy().ravel())
    return out, np.concatenate(all_symbols)


@pytest.mark.parametrize("preset", ["seed-conv", "seed-dense", "factorized"])
@pytest.mark.parametrize("source", ["kodak", "photos"])
def test_round_trip_matches_torch_quantised_reconstruction(trained, preset, source, kodak):
    run, bundle = trained[preset]
    path = kodak / "kodim04.png" if source == "kodak" else PHOTOS / "017.png"  # a photo the tests do not train on
    image = np.asarray(Image.open(path).convert("RGB"))
    if source == "photos":
        image = image[:400, :600]  # keep the dense preset's tile count small
    codec = Codec(bundle, provider="cpu")
    data = codec.compress(image)
    decoded = np.asarray(codec.decompress(data))
    expected, torch_symbols = torch_reference(run, image, codec)
    header, payload, _ = container.parse(data)
    assert header.width == image.shape[1] and header.height == image.shape[0]
    # The file's symbols, read back block by block, against torch's (they were computed and never compared): they
    # may differ only where a value sits within float noise of a rounding boundary, by one.
    tiles = tiling.plan(header.height, header.width, header.tile_height, header.tile_width, codec.stride,
                        codec.fixed_size)
    stream = new_decoder(payload, header.version, [codec._block_symbols(t) for t in tiles])
    symbols = np.concatenate([codec.coder.decode_block(stream, codec._symbol_shape(t), header.version).ravel()
                              for t in tiles])
    assert symbols.shape == torch_symbols.shape
    assert np.abs(symbols - torch_symbols).max() <= 1 and (symbols != torch_symbols).mean() <= 1e-3
    diff = np.abs(decoded.astype(int) - expected.astype(int))
    # 1e-4 on [0, 1] can flip the final rounding to 8 bits by one level, never more.
    assert diff.max() <= 1, diff.max()
    assert (diff > 0).mean() < 0.01


def test_bpp_printed_equals_file_size(trained, kodak, tmp_path):
    _, bundle = trained["factorized"]
    proc = subprocess.run([aectl_exe(), "compress", kodak / "kodim05.png", kodak / "kodim06.png", "-m", bundle,
                           "-o", tmp_path, "--json", "--provider", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] == 2
    for entry in report["files"]:
        size = (tmp_path / entry["target"].split("/")[-1]).stat().st_size
        assert entry["bytes"] == size
        assert entry["bpp"] == pytest.approx(8 * size / (entry["width"] * entry["height"]))


def test_table_indices_of_extreme_symbols_never_wrap_into_a_table():
    """bins() works in 32 bits: with offsets at the +-2**30 limit bundle.py allows, a difference that wraps
    around must still land on the escape index, as the exact 64-bit answer says."""
    offsets = np.array([2**30 - 1, -(2**30 - 1), 0, -3], np.int64)
    cdf = [0, 9000, 30000, 50000, 65000, 1 << 16]  # four symbols and the escape bin
    tables = ChannelTables(offsets, [cdf] * 4, 16)
    edge = [-(2**31), -(2**31) + 1, -(2**31) + 3, -1, 0, 1, 2, 3, 4, 2**31 - 1, 2**31 - 4]
    symbols = np.array([edge + [int(o) + d for d in range(-2, 6)] for o in offsets], dtype=np.int64)
    index = symbols - offsets[:, None]
    expected = np.where((index >= 0) & (index < 4), index, 4)
    assert np.array_equal(tables.bins(symbols.astype(np.int32)), expected)


@pytest.mark.parametrize("version", [4, 3, 2, 1], ids=["v4", "v3", "v2", "v1"])
@pytest.mark.parametrize("kind", ["zeros", "random", "huge", "extremes", "mixed", "modes"])
def test_symbols_decode_exactly_for_adversarial_latents(trained, kind, version):
    _, bundle = trained["factorized"]
    coder = EntropyCoder(Codec(bundle, provider="cpu").bundle.entropy)
    rng = np.random.default_rng(7)
    shape = (coder.channels, 300)
    tables = coder.tables(version).plain
    modes = (tables.mode + tables._offsets32[:, 0])[:, None]
    symbols = {
        "zeros": np.zeros(shape, np.int32),
        "random": rng.integers(-40, 40, shape).astype(np.int32),
        "huge": rng.integers(-2**31 + 1, 2**31 - 1, shape, dtype=np.int64).astype(np.int32),
        "extremes": np.tile(np.array([2**31 - 1, -(2**31 - 1), 0, 1, -1], np.int32), (shape[0], 60)),
        "mixed": np.where(rng.random(shape) < 0.01, 10**6, 0).astype(np.int32),
        # every channel at its mode but for one symbol in every other channel (one escaped): flags both ways
        "modes": np.repeat(modes, 300, axis=1).astype(np.int32),
    }[kind]
    if kind == "modes":
        symbols[::2, 150] += 1
        symbols[2, 7] = 10**6
    enc = new_encoder(version)
    coder.encode_block(enc, symbols, version)
    coder.encode_block(enc, symbols[:, :5], version)
    dec = new_decoder(finish(enc), version, [symbols.size, symbols[:, :5].size])
    assert np.array_equal(coder.decode_block(dec, 300, version), symbols)
    assert np.array_equal(coder.decode_block(dec, 5, version), symbols[:, :5])


def test_group_flags_skip_the_all_mode_channels():
    """A version-2 block codes one flag instead of the 300 symbols of a channel whose symbols all sit at its
    mode, so the range decoder is asked for fewer symbols; version 1 reads every symbol. (Version 3 codes the
    same flags, but its trimmed tables may escape the one symbol off the mode, which reads two more.)"""
    entropy = load_bundle(ROOT / "models" / "factorized-q1").entropy
    coder = EntropyCoder({k: v for k, v in entropy.items() if k != "classes"})  # one group per channel
    tables = coder.tables().plain
    symbols = np.repeat((tables.mode + tables._offsets32[:, 0])[:, None], 300, axis=1).astype(np.int32)
    symbols[0, 3] += 1  # channel 0 is not all at its mode
    flagged = tables.flagged(300)[0].tolist()
    skipped = len(set(flagged) - {0})
    assert skipped > 10
    for version, expected in ((2, len(flagged) + 300 * (coder.channels - skipped)), (1, symbols.size)):
        enc = new_encoder(version)
        coder.encode_block(enc, symbols, version)
        read = []

        class Counting:  # the real range decoder, counting the symbols it is asked for
            decoder = new_decoder(finish(enc), version)

            def decode(self, model, *args):
                read.append(self.decoder.decode(model, *args))
                return read[-1]

        assert np.array_equal(coder.decode_block(Counting(), 300, version), symbols)
        assert sum(r.size for r in read) == expected


def test_class_map_reads_as_docs_aec_format_specifies(kodak):
    """The class map, decoded from a real file as docs/aec-format.md states it (one position at a time in
    row-major order, each under the fixed map table of the class directly above; K on the first row), equals
    the runtime's map. The spec gave another order (by context within a row), which the code had left."""
    import constriction

    codec = Codec(ROOT / "models" / "factorized-q4", provider="cpu")
    image = np.asarray(Image.open(kodak / "kodim07.png").convert("RGB"))[:96, :160]
    header, payload, _ = container.parse(codec.compress(image), container.DEFAULT_MAX_PIXELS)
    rows, cols = header.latent_height, header.latent_width
    classes = codec.bundle.entropy["classes"]
    k = len(classes["cdfs"])
    tables = [constriction.stream.model.Categorical(np.diff(np.asarray(cdf, dtype=np.int64)).astype(np.float64),
                                                    perfect=False) for cdf in classes["map_cdfs"]]
    stream = new_decoder(payload, header.version).next_block()
    spec = np.empty((rows, cols), dtype=np.int64)
    for r in range(rows):
        for c in range(cols):
            spec[r, c] = stream.decode(tables[spec[r - 1, c] if r else k])
    runtime = codec.coder._decode_map(new_decoder(payload, header.version).next_block(), rows, rows * cols)
    assert np.array_equal(spec, runtime) and len(np.unique(spec)) > 1


OLD_FILES = {1: ROOT / "tests" / "data" / "kodim07-256x192-q1-v1.aec",  # written by aectl before format version 2
             2: ROOT / "tests" / "data" / "kodim07-256x192-q1-v2.aec",  # before version 3
             3: ROOT / "tests" / "data" / "kodim07-256x192-q1-v3.aec"}  # and before version 4


def test_trimmed_tables_drop_only_the_floor_bins_at_the_ends():
    """Version 3's tables: the shipped q4's stored tables lose their floor-count bins at both ends to the escape
    bin and keep every other frequency; they get much narrower, and a block holding the symbols of every moved
    bin (now escapes) still round-trips, with the same class choice and flags as version 2."""
    entropy = load_bundle(ROOT / "models" / "factorized-q4").entropy
    coder = EntropyCoder(entropy)
    stored, trimmed = coder.tables(2), coder.tables(3)
    widths = {2: [], 3: []}
    for version, tables in ((2, stored), (3, trimmed)):
        for t in [tables.plain, *tables.classes]:
            widths[version] += t.escape_index.tolist()
    assert np.median(widths[3]) <= np.median(widths[2]) / 4
    cdf = np.asarray(entropy["classes"]["cdfs"][0][0], np.int64)
    freq = np.diff(cdf)
    cut, first = trim(cdf)
    kept = np.diff(cut)
    assert cut[-1] == cdf[-1] and np.array_equal(kept[:-1], freq[first:first + len(kept) - 1])
    assert (freq[:first] == 1).all() and (freq[first + len(kept) - 1:-1] == 1).all() and kept[0] > 1 < kept[-2]
    # Every channel's stored first and last symbol, then the modes: symbols of moved bins in every class.
    offsets = np.asarray(entropy["offsets"], np.int32)[:, None]
    symbols = np.concatenate([offsets + 0, offsets + (stored.plain.escape_index[:, None] - 1),
                              np.repeat(offsets + stored.plain.mode[:, None], 62, axis=1)], axis=1).reshape(-1, 8, 8)
    payloads = {}
    for version in (2, 3):
        enc = new_encoder(version)
        coder.encode_block(enc, symbols, version)
        payloads[version] = finish(enc)
        assert np.array_equal(coder.decode_block(new_decoder(payloads[version], version), (8, 8), version), symbols)
    assert payloads[2] != payloads[3]


def test_compress_writes_older_versions_on_request(tmp_path):
    """`--format-version 1`, `2` and `3` write files that older decoders read: same pixels and symbols as the
    current version, coded as that version codes them. Other versions are one-line errors that write nothing."""
    source = tmp_path / "crop.png"
    Image.open(ROOT / "examples" / "images" / "kodim07.png").crop((120, 100, 376, 292)).save(source)
    q1 = ROOT / "models" / "factorized-q1"
    files = {}
    for version in (1, 2, 3, 4):
        proc = subprocess.run([aectl_exe(), "compress", str(source), "-m", str(q1),
                               "-o", str(tmp_path / f"v{version}.aec"), "--format-version", str(version),
                               "--provider", "cpu"], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        files[version] = (tmp_path / f"v{version}.aec").read_bytes()
    parsed = {version: container.parse(data) for version, data in files.items()}
    assert [h.version for h, _, _ in parsed.values()] == [1, 2, 3, 4] == [1, 2, 3, container.VERSION]
    assert len({payload for _, payload, _ in parsed.values()}) == 4
    codec = Codec(q1, provider="cpu")
    shape = (parsed[4][0].latent_height, parsed[4][0].latent_width)
    symbols = [codec.coder.decode_block(new_decoder(payload, h.version), shape, h.version)
               for h, payload, _ in parsed.values()]
    assert all(np.array_equal(symbols[0], other) for other in symbols[1:])
    images = [np.asarray(codec.decompress(data)) for data in files.values()]
    assert all(np.array_equal(images[0], other) for other in images[1:])
    proc = subprocess.run([aectl_exe(), "compress", str(source), "-m", str(q1), "-o", str(tmp_path / "v5.aec"),
                           "--format-version", "5", "--provider", "cpu"], capture_output=True, text=True)
    assert proc.returncode != 0 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--format-version 5: this aectl writes versions 1, 2, 3, 4" in proc.stderr
    assert not (tmp_path / "v5.aec").exists()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_files_of_older_versions_still_decode(tmp_path, version):
    """Files written by earlier aectl releases decode as they did: their coding is kept byte for byte, and the
    same symbols written at the current version decode to the same pixels."""
    codec = Codec(ROOT / "models" / "factorized-q1", provider="cpu")
    data = OLD_FILES[version].read_bytes()
    header, payload, _ = container.parse(data)
    assert header.version == version
    shape = (header.latent_height, header.latent_width)
    symbols = codec.coder.decode_block(new_decoder(payload, version), shape, version)
    enc = new_encoder(version)
    codec.coder.encode_block(enc, symbols, version)
    assert finish(enc) == payload
    enc = new_encoder()
    codec.coder.encode_block(enc, symbols)
    current = container.pack(dataclasses.replace(header, version=container.VERSION), finish(enc))
    assert container.parse(current)[0].version == container.VERSION > version and current != data
    image = np.asarray(codec.decompress(data))
    assert np.array_equal(image, np.asarray(codec.decompress(current)))
    source = np.asarray(Image.open(ROOT / "examples" / "images" / "kodim07.png").convert("RGB"))[100:292, 120:376]
    mse = np.mean((image.astype(np.float64) - source) ** 2)
    assert 10 * np.log10(255 ** 2 / mse) > 25
    (tmp_path / "old.aec").write_bytes(data)
    info = json.loads(subprocess.run([aectl_exe(), "info", str(tmp_path / "old.aec"), "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format_version"] == version
    unknown = bytearray(data)
    unknown[4] = 5
    with pytest.raises(AectlError, match="format version 5 is not supported .*reads versions 1, 2, 3, 4"):
        container.parse(bytes(unknown))


def test_the_current_version_is_pinned_by_a_fixture():
    """tests/data holds a version 4 file too: its symbols re-encode to its payload byte for byte, so a change in
    our coding or in how constriction quantises a table (the bitstream depends on it: docs/aec-format.md,
    "Models") fails here rather than in the files users keep, and it decodes to the photo it was made from. The
    other versions are pinned above."""
    codec = Codec(ROOT / "models" / "factorized-q1", provider="cpu")
    data = (ROOT / "tests" / "data" / "kodim07-256x192-q1-v4.aec").read_bytes()
    header, payload, _ = container.parse(data)
    assert header.version == container.VERSION == 4
    shape = (header.latent_height, header.latent_width)
    symbols = codec.coder.decode_block(new_decoder(payload, 4), shape, 4)
    enc = new_encoder(4)
    codec.coder.encode_block(enc, symbols, 4)
    assert finish(enc) == payload and len(np.unique(symbols)) > 5
    # and the symbols still mean the same picture (the bytes alone pass with a dequantisation gone wrong)
    image = np.asarray(codec.decompress(data), np.float64)
    source = np.asarray(Image.open(ROOT / "examples" / "images" / "kodim07.png").convert("RGB"))[100:292, 120:376]
    assert 10 * np.log10(255 ** 2 / np.mean((image - source) ** 2)) > 25
    reserved = bytearray(data)
    reserved[33] = 1
    reserved[-4:] = zlib.crc32(reserved[:-4]).to_bytes(4, "little")
    with pytest.raises(AectlError, match=r"reserved byte 0x1, must be 0"):  # it said "unknown flags 0x0"
        container.parse(bytes(reserved))


def test_version_4_codes_each_block_as_its_own_ans_stream():
    """A version 4 payload is the word count of every stream but the last, then the ANS streams; a stream holds
    consecutive blocks until it reaches STREAM_SYMBOLS symbols (here, each of two tiles is one), and decodes to
    exactly them: the same symbols and pixels as version 3's one range-coder stream. Counts
    that do not fit the payload, or a stream that holds more than its blocks, are one-line errors."""
    q1 = ROOT / "models" / "factorized-q1"
    photo = np.asarray(Image.open(ROOT / "examples" / "images" / "kodim07.png").convert("RGB"))
    image = np.ascontiguousarray(np.tile(photo, (1, 3, 1))[:200, :1100])  # two tiles: 1024 and 76 (80) wide
    v3, v4 = Codec(q1, provider="cpu", format_version=3), Codec(q1, provider="cpu")
    header, payload, _ = container.parse(v4.compress(image))
    assert header.version == 4 and header.tiled
    words = np.frombuffer(payload, "<u4")
    shapes = [(header.latent_height, header.latent_width), (header.latent_height, 80 // 16)]
    sizes = [v4.coder.channels * h * w for h, w in shapes]
    assert sizes[0] >= STREAM_SYMBOLS  # so each block is a stream of its own
    first = int(words[0])
    assert 0 < first < len(words) - 1
    blocks = [v4.coder.decode_block(new_decoder(words[1:1 + first].tobytes(), 4), shapes[0], 4),
              v4.coder.decode_block(new_decoder(words[1 + first:].tobytes(), 4), shapes[1], 4)]
    stream = new_decoder(container.parse(v3.compress(image))[1], 3)
    assert all(np.array_equal(b, v3.coder.decode_block(stream, shape, 3)) for b, shape in zip(blocks, shapes))
    pixels = [np.asarray(codec.decompress(codec.compress(image))) for codec in (v3, v4)]
    assert np.array_equal(*pixels)
    for bad, message in ((np.concatenate([[len(words)], words[1:]]), "word counts exceed its length"),
                         (np.concatenate([[first + 1], words[1:]]), "holds more than its block|decoding failed"),
                         (words[:0], "too short")):
        with pytest.raises(AectlError, match=f"corrupted payload: .*({message})"):
            decoder = new_decoder(bad.astype("<u4").tobytes(), 4, sizes)
            v4.coder.decode_block(decoder, shapes[0], 4)
            v4.coder.decode_block(decoder, shapes[1], 4)
    # Small blocks share a stream: three of them make one stream, which also reads as one with no counts.
    assert stream_spans([40000, 40000, 10, 70000, 5]) == [2, 2, 1] and stream_spans([]) == []
    small = [b[:, :2, :3] for b in (blocks[0], blocks[1], blocks[0][:, 3:])]
    enc = new_encoder(4)
    for block in small:
        v4.coder.encode_block(enc, np.ascontiguousarray(block), 4)
    payload = finish(enc)
    assert stream_spans([b.size for b in small]) == [3]
    for decoder in (new_decoder(payload, 4, [b.size for b in small]), new_decoder(payload, 4)):
        assert all(np.array_equal(v4.coder.decode_block(decoder, (2, 3), 4), block) for block in small)


@pytest.fixture(scope="module")
def small_file(trained):
    _, bundle = trained["seed-conv"]
    codec = Codec(bundle, provider="cpu")
    image = np.asarray(Image.open(__import__("conftest").KODAK / "kodim08.png").convert("RGB"))[100:117, 200:233]
    return codec, codec.compress(image)


def test_empty_images_and_a_bare_array_to_compress_batch_are_clear_errors(trained):
    codec = Codec(trained["factorized"][1], provider="cpu")
    for image in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5, 3), np.uint8), Image.new("RGB", (0, 0))):
        with pytest.raises(AectlError, match="needs at least one pixel"):
            codec.compress(image)
    with pytest.raises(AectlError, match="takes a list of images"):  # not 8 one-row images
        codec.compress_batch(np.zeros((8, 8, 3), np.uint8))


def test_arrays_of_every_pillow_mode_compress_as_their_images(trained, kodak):
    """np.asarray of an RGBA or LA image (HxWx4, HxWx2), or HxWx1 gray, was refused ("expected an HxWx3 or HxW
    uint8 array"), so README's Ray example failed on RGBA photos; each now codes as the Pillow image does."""
    codec = Codec(trained["factorized"][1], provider="cpu")
    rgb = Image.open(kodak / "kodim01.png").crop((0, 0, 96, 64))
    alpha = Image.linear_gradient("L").resize((96, 64))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    la = rgb.convert("L")
    la.putalpha(alpha)
    for image in (rgba, la, rgb, rgb.convert("L")):
        data = codec.compress(np.asarray(image))
        assert data == codec.compress(image), image.mode
        assert codec.decompress(data).mode == image.mode
    gray = np.asarray(rgb.convert("L"))
    assert codec.compress(gray[:, :, None]) == codec.compress(gray)
    with pytest.raises(AectlError, match="with C from 1 to 4"):
        codec.compress(np.zeros((8, 8, 5), np.uint8))


@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_an_unusable_gpu_provider_fails_when_the_codec_is_made(trained, provider):
    """README says the codec errors if the asked provider is not usable; it was made without complaint and
    failed at the first compress (sessions start lazily, per network)."""
    from aectl.runtime.providers import probe

    if probe(provider)[0]:
        pytest.skip(f"{provider} works here; covered by tests/test_cuda.py")
    with pytest.raises(AectlError, match="provider"):
        Codec(trained["factorized"][1], provider=provider)


def test_api_arguments_are_checked_when_the_codec_is_made_and_path_likes_are_paths(trained, kodak, tmp_path):
    """Found by a review of the Python API, each failed before: an unknown provider name and threads=2.0
    passed the constructor and failed at the first compress (the latter as a pybind11 TypeError);
    format_version "4" was refused naming 4 among the versions, 4.0 ended in a struct.error and True wrote
    version 1; bytes to the batch calls said "not a int"; a PurePath or any __fspath__ object was refused as
    "not a path"; max_pixels=None and batch_size=None raised TypeError; empty latents reached onnxruntime;
    shipped_bundle("4") said 4 is not shipped."""
    import pathlib

    from aectl.runtime.rate_control import check_budget
    from aectl.runtime.registry import shipped_bundle

    bundle = trained["factorized"][1]
    for kwargs, message in [({"provider": "CPU"}, "unknown provider 'CPU'"), ({"threads": 2.0}, "threads=2.0"),
                            ({"format_version": "4"}, "format_version='4': give an int"),
                            ({"format_version": 4.0}, "format_version=4.0"),
                            ({"format_version": True}, "format_version=True")]:
        with pytest.raises(AectlError, match=message):
            Codec(bundle, **{"provider": "cpu", **kwargs})
    codec = Codec(bundle, provider="cpu", max_pixels=None, batch_size=None)
    photo = tmp_path / "p.png"
    Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 64, 48)).save(photo)

    class Named:
        def __fspath__(self):
            return str(photo)

    data = codec.compress(str(photo))
    assert codec.compress(pathlib.PurePosixPath(photo)) == codec.compress(Named()) == data
    assert codec.decompress(data).size == (64, 48)
    with pytest.raises(AectlError, match="takes a list of images"):
        codec.compress_batch(data)
    with pytest.raises(AectlError, match="takes a list of .aec files' bytes"):
        codec.decompress_batch(data)
    with pytest.raises(AectlError, match="empty latents"):
        codec.decode(codec.encode(np.zeros((1, 3, 32, 48), np.float32))[:, :, :0])
    with pytest.raises(AectlError, match="positive and finite"):
        check_budget(float("nan"), None)
    with pytest.raises(AectlError, match="quality='4': give an int"):
        shipped_bundle("4")


def test_api_errors_name_python_arguments_and_the_cli_its_flags(trained, kodak, tmp_path, monkeypatch):
    """A library caller was told `--threads 100000: give 1..`, to raise --max-pixels, to pass -m or --force,
    and `-q 9`: options it does not have. Now it reads its own parameters; the command line keeps its flags."""
    from aectl.runtime.outputs import atomic_write
    from aectl.runtime.rate_control import check_budget
    from aectl.runtime.registry import shipped_bundle

    q1, q2 = trained["factorized"][1], trained["seed-conv"][1]
    photo = kodak / "kodim07.png"
    data = Codec(q2, provider="cpu").compress(np.zeros((16, 16, 3), np.uint8))
    taken = tmp_path / "taken.aec"
    taken.write_bytes(data)
    calls = [(lambda: Codec(q1, provider="cpu", threads=100000), "threads=100000: give 1.."),
             (lambda: Codec(q1, provider="cpu", format_version=9), "format_version=9: this aectl writes"),
             (lambda: Codec(q1, provider="cpu", max_pixels=10).compress(photo), r"\(raise max_pixels if"),
             (lambda: Codec(q1, provider="cpu", max_pixels=10).decompress(data), r"\(raise max_pixels if"),
             (lambda: Codec(q1, provider="cpu").decompress(data), "; open the matching bundle$"),
             (lambda: shipped_bundle(9), "quality=9: no shipped model"),
             (lambda: check_budget(None, None), "give exactly one of max_bytes and max_bpp"),
             (lambda: atomic_write(taken, b"x"), "exists; pass force=True to overwrite")]
    for call, message in calls:
        with pytest.raises(AectlError, match=message) as err:
            call()
        assert " -m" not in str(err.value) and " -q" not in str(err.value) and "--" not in str(err.value)
    # An install without shipped models: a quality asked for is named (bench and eval -q said "no model given")
    import aectl.runtime.registry as registry

    monkeypatch.setattr(registry, "shipped_qualities", lambda: {})
    for quality, asked in ((3, "quality=3: no model ships"), (None, "no model given and none ships")):
        with pytest.raises(AectlError, match=f"^{asked} with this install: give a bundle folder$"):
            shipped_bundle(quality)
    monkeypatch.undo()
    # The pixel limit has a type of its own (as Pillow's DecompressionBombError), its reason apart from the hint
    from aectl.runtime import PixelLimitError

    small = Codec(q1, provider="cpu", max_pixels=10)
    for call, reason in [(lambda: small.compress(photo), f"{photo}: 768x512 exceeds the limit of 10 pixels"),
                         (lambda: small.compress(np.zeros((4, 4, 3), np.uint8)), "4x4 exceeds the limit of 10 pixels"),
                         (lambda: small.decompress(data), "image of 16x16 = 256 pixels exceeds the limit of 10")]:
        with pytest.raises(PixelLimitError) as err:
            call()
        assert err.value.reason == reason and str(err.value).startswith(reason + " (raise max_pixels if you trust")
    flags = [(["compress", photo, "-m", q1, "--threads", "100000"], "--threads 100000: give 1.."),
             (["compress", photo, "-m", q1, "--max-pixels", "10", "-o", tmp_path / "x.aec"], "raise --max-pixels"),
             (["decompress", taken, "-m", q1, "-o", tmp_path / "x.png"], "pass the matching bundle with -m"),
             (["compress", photo, "-q", "9", "-o", tmp_path / "y.aec"], "-q 9: no shipped model"),
             (["compress", photo, "-m", q1, "-o", taken], "exists; pass --force to overwrite")]
    for args, message in flags:
        proc = subprocess.run([aectl_exe(), *map(str, args), "--provider", "cpu"], capture_output=True, text=True)
        assert proc.returncode == 1 and message in proc.stderr, (args, proc.stderr)


def test_threads_leave_pillows_guard_alone_and_odd_files_fail_cleanly(trained, kodak, tmp_path, monkeypatch):
    """Two threads compressing from paths left Pillow's MAX_IMAGE_PIXELS at None for the whole process (each
    switched it off and "restored" what the other had set); now it is raised, under a lock, only to open a
    file past it. A truncated file opened by the caller raised a bare OSError; 16-bit gray with one
    transparent colour (PNG tRNS) lost its transparency."""
    from concurrent.futures import ThreadPoolExecutor

    codec = Codec(trained["factorized"][1], provider="cpu", threads=1)
    photo = Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 64, 48))
    photo.save(tmp_path / "p.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses the 3072-pixel photo past 2000
    expected = codec.compress(tmp_path / "p.png")
    with ThreadPoolExecutor(2) as pool:
        assert set(pool.map(codec.compress, [tmp_path / "p.png"] * 100)) == {expected}
    assert Image.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(Image.DecompressionBombError):  # the caller's own opens keep Pillow's guard
        Image.open(tmp_path / "p.png")
    photo.save(tmp_path / "p.tif")  # TIFF checks the limit again when loading
    assert codec.compress(tmp_path / "p.tif") == expected
    with pytest.raises(AectlError, match="exceeds the limit of 1500 pixels"):
        Codec(codec.bundle, provider="cpu", max_pixels=1500).compress(tmp_path / "p.tif")
    with pytest.raises(AectlError, match="exceeds the limit of 1000 pixels"):  # Pillow's limit x 2 refuses
        Codec(codec.bundle, provider="cpu", max_pixels=1000).compress(tmp_path / "p.png")
    assert Image.MAX_IMAGE_PIXELS == 1000
    monkeypatch.undo()
    whole = (tmp_path / "p.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(AectlError, match="cannot read image"):
        codec.compress(Image.open(tmp_path / "cut.png"))
    gray = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    gray[:, :16] = 12345
    Image.fromarray(gray).save(tmp_path / "g16t.png", transparency=12345)
    assert Image.open(tmp_path / "g16t.png").mode == "I;16"
    back = codec.decompress(codec.compress(tmp_path / "g16t.png"))
    alpha = np.asarray(back)[:, :, 1]
    assert back.mode == "LA" and (alpha[:, :16] == 0).all() and (alpha[:, 16:] == 255).all()


def test_16_bit_gray_alpha_png_comes_back_gray_alpha(trained, kodak, tmp_path):
    """Pillow opens a 16-bit gray + alpha PNG as 8-bit RGBA (it has no 16-bit LA mode), and it came back RGBA;
    now it comes back LA, like 8-bit gray + alpha, with the same pixels as that file's 8-bit twin. The PNG is
    written by hand (PNG spec: IHDR colour type 4, depth 16), as Pillow cannot write one."""
    gray = np.asarray(Image.open(kodak / "kodim07.png").convert("L").crop((0, 0, 64, 48)), dtype=np.uint16) * 257
    alpha = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    rows = b"".join(b"\x00" + np.dstack([gray, alpha])[y].astype(">u2").tobytes() for y in range(48))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path = tmp_path / "la16.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 16, 4, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    assert Image.open(path).mode == "RGBA"
    codec = Codec(trained["factorized"][1], provider="cpu")
    back = codec.decompress(codec.compress(path))
    twin = Image.fromarray(np.dstack([gray >> 8, alpha >> 8]).astype(np.uint8), "LA")  # Pillow's 16 -> 8 bits
    assert back.mode == "LA" and np.array_equal(np.asarray(back), np.asarray(codec.decompress(codec.compress(twin))))


def test_every_single_byte_flip_is_rejected(small_file):
    """docs/robustness.md: the magic or the version is named first, a size field's flip as the sizes it breaks,
    anything else by the checksum; always one line."""
    codec, data = small_file
    for i in range(len(data)):
        bad = bytearray(data)
        bad[i] ^= 0xFF
        with pytest.raises(AectlError) as err:
            codec.decompress(bytes(bad))
        message = str(err.value)
        if i < 4:
            assert message == "not an .aec file (bad magic bytes)", (i, message)
        elif i == 4:
            assert re.fullmatch(r"\.aec format version \d+ is not supported \(this aectl reads versions [\d, ]+\)",
                                message), message
        else:
            assert re.fullmatch(r"corrupted \.aec file \(checksum mismatch\)|truncated \.aec file \(\d+ of \d+ "
                                r"bytes\)|corrupted \.aec file \(\d+ unexpected bytes? after the end\)", message), \
                (i, message)


def test_every_truncation_is_rejected(small_file):
    """Each length names what is missing (docs/robustness.md lists these messages)."""
    codec, data = small_file
    for n in range(len(data)):
        with pytest.raises(AectlError) as err:
            codec.decompress(data[:n])
        expected = ("empty file, not an .aec file" if n == 0 else
                    "not an .aec file (bad magic bytes)" if n < 4 else
                    "truncated .aec file (no version)" if n == 4 else
                    f"truncated .aec file ({n} bytes, the header alone needs 60)" if n < 60 else
                    f"truncated .aec file ({n} of {len(data)} bytes)")
        assert str(err.value) == expected, (n, str(err.value))
    with pytest.raises(AectlError, match=r"\(1 unexpected byte after the end\)"):  # it said "1 unexpected bytes"
        codec.decompress(data + b"\0")


def test_foreign_file_and_model_mismatch_are_named(trained, small_file):
    codec, data = small_file
    with pytest.raises(AectlError, match="not an .aec file"):
        codec.decompress(b"\x89PNG\r\n\x1a\n" + bytes(100))
    other = Codec(trained["factorized"][1], provider="cpu")
    with pytest.raises(AectlError) as err:
        other.decompress(data)
    assert codec.model_id in str(err.value) and other.model_id in str(err.value)


def test_declared_size_is_checked_before_allocation(small_file):
    codec, data = small_file
    header, payload, alpha = container.parse(data)
    header.width, header.height = 60000, 60000
    with pytest.raises(AectlError, match="exceeds the limit"):
        codec.decompress(container.pack(header, payload, alpha))


MODES = ["RGB", "L", "RGBA", "LA", "P", "PA-transparent", "1", "I;16", "CMYK"]


def _make(mode: str, base: Image.Image) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257 + 3)
    if mode == "PA-transparent":
        img = base.convert("P")
        img.info["transparency"] = 0
        return img
    if mode in ("RGBA", "LA"):
        img = base.convert(mode)
        alpha = Image.linear_gradient("L").resize(base.size)
        img.putalpha(alpha)
        return img
    return base.convert(mode)


@pytest.mark.parametrize("preset", ["seed-conv", "factorized", "seed-dense"])
@pytest.mark.parametrize("size", [(1, 1), (17, 33), (64, 64), (768, 512)])
def test_sizes_and_modes_round_trip(trained, kodak, preset, size):
    _, bundle = trained[preset]
    codec = Codec(bundle, provider="cpu")
    base = Image.open(kodak / "kodim09.png").convert("RGB")
    base = base.crop((0, 0, *size)) if size[0] <= base.width else base
    modes = MODES if size != (768, 512) else ["RGB", "RGBA"]
    for mode in modes:
        img = _make(mode, base)
        out = codec.decompress(codec.compress(img))
        assert out.size == img.size, mode
        if mode in ("L", "1", "I;16"):
            assert out.mode == ("I;16" if mode == "I;16" else "L"), mode
        if mode in ("RGBA", "LA"):
            assert np.array_equal(np.asarray(out)[..., -1], np.asarray(img)[..., -1]), "alpha is kept losslessly"
        if mode == "PA-transparent":
            assert out.mode == "RGBA"
        if mode in AS_PILLOW_CONVERTS:  # the colours too (only sizes and modes were checked: palette indices read
            # as gray levels, or C, M, Y read as R, G, B, passed)
            same = codec.decompress(codec.compress(img.convert(AS_PILLOW_CONVERTS[mode])))
            assert np.array_equal(np.asarray(out), np.asarray(same)), mode


# Modes whose pixels the codec reads as Pillow converts them.
AS_PILLOW_CONVERTS = {"P": "RGB", "PA-transparent": "RGBA", "1": "L", "CMYK": "RGB"}


def _png_file(path, width: int, height: int, depth: int, colour_type: int, rows: list[bytes], *chunks) -> None:
    """A PNG written by hand, for what Pillow cannot write (PNG spec: IHDR, then `chunks` as (type, body), then
    one IDAT of unfiltered rows)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type,
                                                                        0, 0, 0))
                     + b"".join(chunk(kind, body) for kind, body in chunks)
                     + chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows))) + chunk(b"IEND", b""))


def _layered_psd(path, composite: np.ndarray, layers: list[np.ndarray]) -> None:
    """An 8-bit RGB PSD with `layers` and its flattened `composite`, raw channels (Adobe's Photoshop File Formats
    Specification: header, empty colour mode and resources sections, layer records then their channel data, the
    composite last). Pillow reads PSD, but cannot write one."""
    height, width = composite.shape[:2]
    records = channels = b""
    for k, layer in enumerate(layers):
        records += struct.pack(">iiiiH", 0, 0, height, width, 3)
        records += b"".join(struct.pack(">hI", c, 2 + height * width) for c in range(3))
        name = bytes([2]) + b"L%d" % k + b"\0"  # a Pascal string padded to 4 bytes
        records += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">III", 8 + len(name), 0, 0) + name
        channels += b"".join(b"\0\0" + layer[..., c].tobytes() for c in range(3))
    info = struct.pack(">h", len(layers)) + records + channels
    info += b"\0" * (len(info) % 2)
    layer_section = struct.pack(">I", len(info)) + info + struct.pack(">I", 0)
    path.write_bytes(b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3) + struct.pack(">II", 0, 0)
                     + struct.pack(">I", len(layer_section)) + layer_section + b"\0\0"
                     + b"".join(composite[..., c].tobytes() for c in range(3)))


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's, in this process; the CLI hides it
def test_what_only_the_file_tells_pillow_is_kept(trained, kodak, tmp_path):
    """A review's hand-made files: a dark 16-bit PGM (values under 256 of 65535) came back as 8-bit levels, 257
    times too bright (Pillow opens 16-bit PGM as I); the transparent colour of a 1-, 2- or 4-bit gray PNG came
    back opaque (Pillow keeps tRNS in the file's scale), and a 16-bit RGB PNG's too (Pillow reads it at 8 bits,
    where the colour cannot be matched: refused now, its file closed); a layered PSD was refused as multi-page;
    a PNG whose eXIf chunk is garbage was an internal error that stopped a batch, and corrupt EXIF printed
    Pillow's two-line warning."""
    codec = Codec(trained["factorized"][1], provider="cpu")
    gray = np.asarray(Image.open(kodak / "kodim07.png").convert("L").crop((0, 0, 64, 48)))
    (tmp_path / "dark.pgm").write_bytes(b"P5\n64 48\n65535\n" + gray.astype(">u2").tobytes())
    Image.fromarray(gray.astype(np.uint16)).save(tmp_path / "dark.png")  # the same 16-bit values
    back = codec.decompress(codec.compress(tmp_path / "dark.pgm"))
    assert back.mode == "I;16"  # it was L
    with Image.open(tmp_path / "dark.pgm") as opened:  # given as a PIL image too (a review's finding)
        assert codec.compress(opened) == codec.compress(tmp_path / "dark.pgm")
    assert np.array_equal(np.asarray(back), np.asarray(codec.decompress(codec.compress(tmp_path / "dark.png"))))

    bits = np.zeros((48, 64), dtype=bool)
    bits[:, 40:] = True
    for value in (0, 1):
        Image.fromarray(bits).save(tmp_path / f"bw{value}.png", transparency=value)
        back = codec.decompress(codec.compress(tmp_path / f"bw{value}.png"))
        assert back.mode == "LA" and np.array_equal(np.asarray(back)[:, :, 1] == 0, bits == bool(value)), value
    for depth in (2, 4):  # columns of every level; the top one transparent
        top = (1 << depth) - 1
        levels = np.tile(np.arange(64, dtype=np.uint8) % (top + 1), (48, 1))
        packed = np.packbits(np.unpackbits(levels[:, :, None], axis=2)[:, :, 8 - depth:].reshape(48, -1), axis=1)
        path = tmp_path / f"gray{depth}.png"
        _png_file(path, 64, 48, depth, 0, [row.tobytes() for row in packed], (b"tRNS", struct.pack(">H", top)))
        with Image.open(path) as opened:
            assert opened.mode == "L"
        back = codec.decompress(codec.compress(path))
        assert back.mode == "LA" and np.array_equal(np.asarray(back)[:, :, 1] == 0, levels == top), depth

    rgb16 = np.dstack([gray.astype(">u2") * 257] * 3)
    _png_file(tmp_path / "rgb16.png", 64, 48, 16, 2, [row.tobytes() for row in rgb16],
              (b"tRNS", struct.pack(">HHH", *rgb16[0, 0])))
    Image.fromarray(gray).save(tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(255 - gray)])
    open_files = len(os.listdir("/proc/self/fd"))
    with pytest.raises(AectlError, match="16-bit RGB PNG with a transparent colour .*: save it as RGBA first"):
        codec.compress(tmp_path / "rgb16.png")
    with pytest.raises(AectlError, match="GIF image of 2 frames"):
        codec.compress(tmp_path / "anim.gif")
    assert len(os.listdir("/proc/self/fd")) == open_files  # both files closed

    photo = np.asarray(Image.open(kodak / "kodim01.png").convert("RGB").crop((0, 0, 64, 48)))
    _layered_psd(tmp_path / "layered.psd", photo, [photo, 255 - photo])
    with Image.open(tmp_path / "layered.psd") as opened:
        assert opened.n_frames == 2  # its layers
    assert codec.compress(tmp_path / "layered.psd") == codec.compress(photo)

    Image.fromarray(photo).save(tmp_path / "plain.png")
    plain = (tmp_path / "plain.png").read_bytes()
    end = plain.rindex(b"IEND") - 4
    for name, exif in (("garbage", b"\x01\x02\x03\x04garbage!!"), ("corrupt", b"MM\x00\x2a\xff\xff\xff\xf0")):
        body = b"eXIf" + exif
        chunk = struct.pack(">I", len(exif)) + body + struct.pack(">I", zlib.crc32(body))
        (tmp_path / f"{name}.png").write_bytes(plain[:end] + chunk + plain[end:])
        assert codec.compress(tmp_path / f"{name}.png") == codec.compress(tmp_path / "plain.png"), name
    proc = subprocess.run([aectl_exe(), "compress", tmp_path / "garbage.png", tmp_path / "corrupt.png", "-o",
                           tmp_path / "out", "-m", trained["factorized"][1], "--provider", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr == "2 ok, 0 failed\n", proc.stderr


def test_exif_rotation_is_applied(trained, kodak, tmp_path):
    """The upright pixels are coded, as a viewer shows them (only the turned size was checked, which any quarter
    turn or transpose passes)."""
    _, bundle = trained["seed-conv"]
    codec = Codec(bundle, provider="cpu")
    img = Image.open(kodak / "kodim10.png").convert("RGB").crop((0, 0, 96, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.png", exif=exif.tobytes())
    out = codec.decompress(codec.compress(tmp_path / "rot.png"))
    upright = codec.decompress(codec.compress(img.transpose(Image.Transpose.ROTATE_270)))
    assert out.size == (48, 96) and np.array_equal(np.asarray(out), np.asarray(upright))
    assert not np.array_equal(np.asarray(out), np.asarray(codec.decompress(codec.compress(
        img.transpose(Image.Transpose.ROTATE_90))))), "the two quarter turns tell apart"


def _through(image: Image.Image, profile: bytes, mode: str) -> np.ndarray:
    """What littlecms makes of `image` under `profile`, in sRGB: the colours a browser shows."""
    import io

    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    return np.asarray(ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=mode))


def test_icc_tagged_images_are_coded_in_srgb(kodak, tmp_path):
    """Pixel values were coded as if sRGB whatever profile a file carried: a Display P3 photo (every recent phone)
    came back with its blues 5.6 levels off on average, a linear-gray or CMYK file further off. Each is now
    converted to sRGB through its profile first, as viewers show it; the output is sRGB."""
    from PIL import ImageCms

    from aectl.runtime.image_io import read_rgb, to_pixels
    from aectl.train.data import load_rgb
    from icc_profiles import cmyk_profile, gray_profile, rgb_profile

    photo = Image.open(kodak / "kodim03.png").convert("RGB")
    p3 = rgb_profile()
    photo.save(tmp_path / "p3.png", icc_profile=p3)
    shown = _through(photo, p3, "RGB").astype(float)
    subprocess.run([aectl_exe(), "compress", tmp_path / "p3.png", "-o", tmp_path / "p3.aec"], check=True,
                   capture_output=True)  # the shipped default model
    subprocess.run([aectl_exe(), "decompress", tmp_path / "p3.aec", "-o", tmp_path / "back.png"], check=True,
                   capture_output=True)
    back = Image.open(tmp_path / "back.png")
    assert "icc_profile" not in back.info  # untagged: sRGB
    channel_error = np.abs(np.asarray(back, dtype=float).mean((0, 1)) - shown.mean((0, 1)))
    assert channel_error.max() < 1.0 and np.abs(shown - np.asarray(photo)).mean((0, 1)).max() > 3, channel_error
    assert np.array_equal(read_rgb(tmp_path / "p3.png", 1 << 24), shown.astype(np.uint8))  # what eval measures
    assert np.array_equal(load_rgb(tmp_path / "p3.png", 64), shown.astype(np.uint8))  # and what training sees

    crop = photo.crop((0, 0, 128, 96))
    rgba = crop.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(crop.size))
    rgba.info["icc_profile"] = p3
    pixels = to_pixels(rgba)
    assert np.array_equal(pixels.rgb, _through(crop, p3, "RGB")) and np.array_equal(pixels.alpha,
                                                                                      np.asarray(rgba)[..., 3])
    gray = crop.convert("L")
    gray.info["icc_profile"] = gray_profile()  # linear light: shown much brighter than its values
    pixels = to_pixels(gray)
    assert pixels.channels == 1 and np.array_equal(pixels.rgb[..., 0], _through(gray, gray_profile(), "RGB")[..., 1])
    corners = []  # a CMYK profile that agrees with Pillow's plain conversion at the ink corners only
    for c, m, y, k in np.ndindex(2, 2, 2, 2):
        rgb = Image.new("CMYK", (1, 1), (255 * c, 255 * m, 255 * y, 255 * k)).convert("RGB")
        lab = ImageCms.profileToProfile(rgb, ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                        outputMode="LAB").getpixel((0, 0))
        corners.append((lab[0] * 100 / 255, lab[1] - 128, lab[2] - 128))
    cmyk = crop.convert("CMYK")
    cmyk.save(tmp_path / "print.jpg", icc_profile=cmyk_profile(corners), quality=95)
    opened = Image.open(tmp_path / "print.jpg")
    assert np.array_equal(to_pixels(opened).rgb, _through(opened, cmyk_profile(corners), "RGB"))

    sixteen = Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257)  # 16-bit gray went around the profile
    sixteen.info["icc_profile"] = gray_profile()
    assert np.array_equal(to_pixels(sixteen).rgb[..., 0], _through(gray, gray_profile(), "RGB")[..., 1])
    named = crop.copy()  # a name is no proof: "Linear sRGB" profiles were taken for sRGB and left alone
    named.info["icc_profile"] = rgb_profile("Linear sRGB (gamma 1.0)", gamma=1.0)
    assert np.array_equal(to_pixels(named).rgb, _through(crop, named.info["icc_profile"], "RGB"))

    untagged = to_pixels(crop).rgb  # sRGB-tagged and broken profiles leave the values as they are
    for profile in (ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes(), b"not a profile"):
        crop.info["icc_profile"] = profile
        assert np.array_equal(to_pixels(crop).rgb, untagged)


def test_batch_api_matches_single_calls(trained, kodak):
    _, bundle = trained["factorized"]
    codec = Codec(bundle, provider="cpu")
    images = [np.asarray(Image.open(kodak / f"kodim0{i}.png").convert("RGB")) for i in (1, 2, 3)]
    batch = codec.compress_batch(images)
    assert batch == [codec.compress(img) for img in images]
    decoded = codec.decompress_batch(batch)
    assert all(np.array_equal(np.asarray(a), np.asarray(codec.decompress(b))) for a, b in zip(decoded, batch))


def test_batches_share_runs_only_within_the_pixel_budget(trained, kodak):
    """Small same-size images share session runs; kodak-size images on the CPU run one by one (a run of eight
    gains nothing there, runtime/network.py CPU_RUN_PIXELS); files are the same either way."""
    from aectl.runtime.network import CPU_RUN_PIXELS

    _, bundle = trained["factorized"]
    codec = Codec(bundle, provider="cpu", batch_size=8)
    run_sizes: list[int] = []
    encode = codec.network.encode
    codec.network.encode = lambda x: run_sizes.append(x.shape[0]) or encode(x)
    photo = np.asarray(Image.open(kodak / "kodim01.png").convert("RGB"))
    small = [np.ascontiguousarray(photo[i * 64:(i + 1) * 64, :64]) for i in range(8)]
    large = [photo] * 3
    assert photo.shape[0] * photo.shape[1] * 2 > CPU_RUN_PIXELS
    files = codec.compress_batch(small + large)
    assert sorted(run_sizes) == [1, 1, 1, 8]
    one_by_one = Codec(bundle, provider="cpu", batch_size=1)
    assert files == [one_by_one.compress(img) for img in small + large]


@pytest.mark.parametrize("preset, first_events", [
    ("seed-conv", ["run", "run", "run", "block", "block", "block", "run"]),  # tiles of 1024: one per run
    ("seed-dense", ["run", "block", "block", "block", "run"]),  # fixed 48x48 tiles: three per run
])
def test_batches_code_their_blocks_together_and_in_each_files_order(trained, kodak, preset, first_events):
    """A batch's blocks are range coded together, after its encoder runs and before its decoder runs
    (codec.py _batches). With batch_size 3, batches end inside the runs of tiled images and mix blocks of
    several files: each file must still get its own blocks in its own order, so files and pixels equal those
    of one image at a time."""
    _, bundle = trained[preset]
    photo = np.tile(np.asarray(Image.open(kodak / "kodim01.png").convert("RGB")), (1, 2, 1))
    images = [photo[:300, :1100], photo[200:230, 300:340], photo[:150, 400:1500], photo[400:420, 500:530]]
    images = [np.ascontiguousarray(img) for img in images]
    codec = Codec(bundle, provider="cpu", batch_size=3)
    events: list[str] = []
    encode, encode_block = codec.network.encode, codec.coder.encode_block
    codec.network.encode = lambda x: events.append("run") or encode(x)
    codec.coder.encode_block = lambda *a: events.append("block") or encode_block(*a)
    files = codec.compress_batch(images)
    assert events[:len(first_events)] == first_events
    one_by_one = Codec(bundle, provider="cpu", batch_size=1)
    assert files == [one_by_one.compress(img) for img in images]
    assert sum(container.parse(f)[0].tiled for f in files) == 2
    decoded = codec.decompress_batch(files)
    assert all(np.array_equal(np.asarray(a), np.asarray(one_by_one.decompress(f))) for a, f in zip(decoded, files))


def test_tile_borders_do_not_show(kodak):
    """Tiles of a big image were coded each on its own, and the bands around their borders lost 3 dB of PSNR
    against the rest on a 3000x2000 photo (4.8 dB on a 5000x300 strip): a visible grid. With the halo (tiling's
    docstring) the 4-pixel bands at the borders are as good as the rest of the image, within 0.5 dB, and as
    good as bands at other places."""
    from aectl.runtime.registry import shipped_bundle

    photo = np.asarray(Image.open(kodak / "kodim01.png").convert("RGB").resize((2100, 1400), Image.LANCZOS))
    codec = Codec(shipped_bundle(4), provider="cpu")  # before: 34.15 dB at the borders, 36.66 elsewhere
    data = codec.compress(photo)
    assert container.parse(data)[0].tiled
    decoded = np.asarray(codec.decompress(data)).astype(np.float64)

    def band_psnr(rows, cols):
        near = np.zeros(photo.shape[:2], bool)
        for r in rows:
            near[r - 2:r + 2] = True
        for c in cols:
            near[:, c - 2:c + 2] = True
        return [10 * np.log10(255**2 / np.mean((photo[m] - decoded[m]) ** 2)) for m in (near, ~near)]

    borders, rest = band_psnr([1024], [1024, 2048])
    elsewhere, _ = band_psnr([600], [600, 1500])
    assert borders > rest - 0.5 and borders > elsewhere - 0.5, (borders, rest, elsewhere)


def test_huge_image_in_bounded_memory(trained, tmp_path):
    """12000x8000 (96 Mpx) round-trips through tiles; peak memory stays within a few image-sizes."""
    _, bundle = trained["seed-conv"]
    code = f"""
import numpy as np
from PIL import Image
from aectl.runtime import Codec
codec = Codec({str(bundle)!r}, provider="cpu", threads=2)
tile = np.asarray(Image.open({str(__import__('conftest').KODAK / 'kodim01.png')!r}).convert('RGB'))
image = np.ascontiguousarray(np.tile(tile, (16, 16, 1))[:8000, :12000])
data = codec.compress(image)
del image
out = codec.decompress(data)
assert out.size == (12000, 8000)
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's).
print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split()[-1])
    image_mb = 12000 * 8000 * 3 / 2**20  # 275 MB of uint8 pixels
    assert peak_mb < 5 * image_mb, f"peak RSS {peak_mb} MB"


def test_cli_batch_reports_bad_files_and_mirrors_tree(trained, kodak, tmp_path):
    _, bundle = trained["seed-conv"]
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.open(kodak / "kodim11.png").crop((0, 0, 100, 80)).save(src / "sub" / "a.png")
    Image.open(kodak / "kodim12.png").crop((0, 0, 50, 70)).save(src / "b.png")
    (src / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    proc = subprocess.run([aectl_exe(), "compress", src, "-m", bundle, "-o", out, "--provider", "cpu"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert (out / "sub" / "a.aec").is_file() and (out / "b.aec").is_file() and not (out / "broken.aec").exists()
    assert proc.stderr.count("broken.png") == 1
    again = subprocess.run([aectl_exe(), "compress", src / "b.png", "-m", bundle, "-o", out], capture_output=True,
                           text=True)
    assert again.returncode == 1 and "--force" in again.stderr
    back = tmp_path / "back"
    proc = subprocess.run([aectl_exe(), "decompress", out, "-o", back, "-m", bundle], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(back / "sub" / "a.png").size == (100, 80)
    assert not list(back.rglob("*.tmp")) and not list(out.rglob("*.tmp"))


def test_decompress_finds_bundle_by_model_id(trained, kodak, tmp_path, monkeypatch):
    _, bundle = trained["factorized"]
    aec = tmp_path / "k.aec"
    aec.write_bytes(Codec(bundle, provider="cpu").compress(kodak / "kodim03.png"))
    env = {**__import__("os").environ, "AECTL_BUNDLES": str(bundle.parent)}
    proc = subprocess.run([aectl_exe(), "decompress", aec, "-o", tmp_path / "k.png"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([aectl_exe(), "info", aec, "--json"], capture_output=True, text=True)
    assert json.loads(proc.stdout)["model_id"] == Codec(bundle, provider="cpu").model_id


@pytest.fixture
def kodak_image_small(kodak_image) -> np.ndarray:
    return kodak_image[:64, :96]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_api_arguments_are_taken_or_refused_as_a_python_user_passes_them(kodak_image_small):
    """From a review of the Python API: an np.matrix aborted the process inside numpy; numpy integers (`h * w`
    of a shape) were refused as "give a whole number"; batch_size 0 was taken as 1 and "8" a TypeError;
    `network=` ran another model's graphs under this model's id, and took no notice of provider/threads;
    None, a str or a number as a batch was a TypeError or iterated characters; a bad file in a batch was not
    named; None as a bundle was pathlib's TypeError."""
    from aectl.runtime.network import Network

    q4, q1 = ROOT / "models" / "factorized-q4", ROOT / "models" / "factorized-q1"
    image = kodak_image_small
    codec = Codec(q4, provider="cpu")
    gray = np.ascontiguousarray(image[:, :, 0])
    assert codec.compress(np.asmatrix(gray)) == codec.compress(gray)
    assert codec.compress(np.asmatrix(image[:, :, 0])) == codec.compress(gray)  # non-contiguous: it aborted
    as_numpy = Codec(q4, provider="cpu", threads=np.int64(2), max_pixels=np.int64(10**6),
                     format_version=np.int64(3), batch_size=np.int64(2))
    assert as_numpy.compress(image) == Codec(q4, provider="cpu", threads=2, format_version=3).compress(image)
    bundle = load_bundle(q4)
    for kwargs, message in [({"batch_size": 0}, "batch_size=0: give a whole number, 1 or more"),
                            ({"batch_size": "8"}, "batch_size='8'"), ({"batch_size": 2.5}, "batch_size=2.5"),
                            ({"network": Network(load_bundle(q1), provider="cpu")}, "network= runs model .*, not "
                                                                                     "this bundle's"),
                            ({"provider": "cpu", "network": Network(bundle)}, "a given network= runs on its own")]:
        with pytest.raises(AectlError, match=message):
            Codec(bundle, **kwargs)
    for bad in (None, 3):
        with pytest.raises(AectlError, match="give a bundle folder's path"):
            Codec(bad)
    good = codec.compress(image)
    for call, arg in [(codec.compress_batch, None), (codec.decompress_batch, None),
                      (codec.decompress_batch, "a.aec"), (codec.decompress_batch, 5)]:
        with pytest.raises(AectlError, match="takes a list"):
            call(arg)
    with pytest.raises(AectlError, match=r"pass list\(array\)"):
        codec.compress_batch(np.stack([image, image]))
    with pytest.raises(AectlError, match="^file 1 of the batch: not an .aec file"):
        codec.decompress_batch([good, b"AEC?", good])


def test_one_session_per_role_however_many_threads_ask_first(kodak_image_small):
    """Eight threads' first calls on one codec made eight encoder sessions, each kept by its thread (184 MB
    against 91); README says the sessions are shared."""
    from concurrent.futures import ThreadPoolExecutor

    import aectl.runtime.network as network_module

    codec = Codec(ROOT / "models" / "factorized-q4", provider="cpu", threads=1)
    made = []
    real = network_module.create_session

    def counting(*args, **kwargs):
        made.append(args[1:])
        return real(*args, **kwargs)
    original, network_module.create_session = network_module.create_session, counting
    try:
        with ThreadPoolExecutor(8) as pool:
            blobs = list(pool.map(lambda _: codec.compress(kodak_image_small), range(8)))
            images = list(pool.map(lambda blob: np.asarray(codec.decompress(blob)), blobs))
    finally:
        network_module.create_session = original
    assert len(made) == 2 and len(set(blobs)) == 1 and all(np.array_equal(images[0], i) for i in images)


def test_a_tampered_file_that_decodes_to_undefined_pixels_is_refused():
    """A version 3 file whose escape-coded symbols were set to ~8e8 and its CRC repaired (found by a helper's
    fuzzing) decoded to NaN, cast to uint8 with only a RuntimeWarning."""
    import warnings

    data = (ROOT / "tests" / "data" / "tampered-96x64-q4-v3.aec").read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AectlError, match="corrupted .aec file .*undefined pixels"):
            Codec(ROOT / "models" / "factorized-q4", provider="cpu").decompress(data)
