"""aectl bench end to end on a tiny real model (structure and sane values, never timings), MAC counts that are
checked against hand-computed ones, and one-line errors for bad inputs."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import aectl_exe
from test_torch_free import run_blocked


def aectl(*args, check=True, env=None):
    proc = subprocess.run([aectl_exe(), *map(str, args)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def factorized_macs(n: int, m: int, h: int, w: int) -> tuple[int, int]:
    """Encoder and decoder MACs of models.Factorized at an h x w input, counted by hand from its layers:
    four 5x5 stride-2 convs with GDN (a 1x1 C x C conv on x*x) between them, and four sub-pixel stages
    (3x3 conv to 4 * C_out channels at the low resolution, then depth-to-space) with inverse GDN."""
    enc = (h // 2 * w // 2) * n * 3 * 25 + (h // 2 * w // 2) * n * n \
        + (h // 4 * w // 4) * n * n * 25 + (h // 4 * w // 4) * n * n \
        + (h // 8 * w // 8) * n * n * 25 + (h // 8 * w // 8) * n * n \
        + (h // 16 * w // 16) * m * n * 25
    dec = (h // 16 * w // 16) * 4 * n * m * 9 + (h // 8 * w // 8) * n * n \
        + (h // 8 * w // 8) * 4 * n * n * 9 + (h // 4 * w // 4) * n * n \
        + (h // 4 * w // 4) * 4 * n * n * 9 + (h // 2 * w // 2) * n * n \
        + (h // 2 * w // 2) * 4 * 3 * n * 9
    return enc, dec


def test_macs_of_a_tiny_factorized_graph_match_the_hand_count(trained):
    from aectl.perf.macs import count_macs
    from aectl.runtime import load_bundle

    _, bundle = trained["factorized"]
    arch = load_bundle(bundle).manifest["architecture"]
    n, m = arch["n"], arch["m"]
    for batch, h, w in [(1, 64, 96), (2, 48, 32)]:
        enc, dec = factorized_macs(n, m, h, w)
        assert count_macs(bundle / "encoder.onnx", {"x": (batch, 3, h, w)})["total"] == batch * enc
        counted = count_macs(bundle / "decoder.onnx", {"y_hat": (batch, m, h // 16, w // 16)})
        assert counted["total"] == batch * dec
        assert set(counted["by_op"]) == {"Conv"} and counted["elementwise"] > 0


def test_macs_of_hand_built_graph():
    """Grouped Conv, ConvTranspose, MatMul and Gemm with transA in one graph, each counted by hand."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from aectl.perf.macs import count_macs

    w_conv = numpy_helper.from_array(np.zeros((8, 2, 3, 3), np.float32), "wc")      # group 2: C_in/group = 2
    w_tr = numpy_helper.from_array(np.zeros((8, 3, 4, 4), np.float32), "wt")        # C_out = 3
    b_mm = numpy_helper.from_array(np.zeros((5, 7), np.float32), "bm")
    a_gemm = numpy_helper.from_array(np.zeros((7, 6), np.float32), "ag")            # transA: (6, 7) @ (7, 2)
    b_gemm = numpy_helper.from_array(np.zeros((7, 2), np.float32), "bg")
    nodes = [
        helper.make_node("Conv", ["x", "wc"], ["c"], group=2, pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["v", "bm"], ["mm"]),
        helper.make_node("Gemm", ["ag", "bg"], ["g"], transA=1),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"]),
                                           helper.make_tensor_value_info("v", TensorProto.FLOAT, [3, 5])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("t", "mm", "g")],
                              [w_conv, w_tr, b_mm, a_gemm, b_gemm])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = count_macs(model, {"x": (2, 4, 10, 12), "v": (3, 5)})
    conv = 2 * 8 * 5 * 6 * 2 * 3 * 3            # N * C_out * H_out * W_out * C_in/group * k * k
    transposed = 2 * 8 * 5 * 6 * 3 * 4 * 4      # N * C_in * H_in * W_in * C_out * k * k
    assert got["by_op"] == {"Conv": conv, "ConvTranspose": transposed, "MatMul": 3 * 7 * 5, "Gemm": 6 * 2 * 7}
    assert got["total"] == conv + transposed + 105 + 84


@pytest.fixture(scope="module")
def two_images(kodak, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-images")
    for name in ("kodim03.png", "kodim07.png"):
        shutil.copy(kodak / name, folder / name)
    return folder


def test_bench_end_to_end_on_a_tiny_model(trained, two_images, tmp_path):
    _, bundle = trained["factorized"]
    saved = tmp_path / "bench.json"
    proc = aectl("bench", "-m", bundle, "--images", two_images, "--provider", "cpu", "--repeats", "2",
                 "--batch-sizes", "1,2", "--json", "--save", saved)
    result = json.loads(proc.stdout)
    assert json.loads(saved.read_text()) == result
    assert saved.read_text() == proc.stdout  # the file is what --json prints, its last newline too
    # An existing --save file is refused before any measuring, a folder too, and a path under a file.
    for target in (saved, tmp_path, saved / "under-a-file.json"):
        again = aectl("bench", "-m", bundle, "--images", two_images, "--save", target, check=False)
        assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1, again.stderr
        assert again.stderr.startswith("error: ") and "bench:" not in again.stderr
    assert json.loads(saved.read_text()) == result
    assert result["images"]["count"] == 2 and result["config"]["threads"] == 2
    cpu = result["providers"]["cpu"]
    assert cpu["session_providers"] == ["CPUExecutionProvider", "CPUExecutionProvider"]
    assert set(cpu["engines"]) == {"onnxruntime", "torch"}
    # torch eager runs the bundle's own weights: same numbers as onnxruntime.
    assert cpu["torch_vs_onnxruntime_max_diff"]["encoder_rel_diff"] <= 1e-4
    assert cpu["torch_vs_onnxruntime_max_diff"]["decoder_abs_diff"] <= 1e-4
    for engine in ("onnxruntime", "torch"):
        for batch in ("batch_1", "batch_2"):
            for direction in ("compress", "decompress"):
                rec = cpu["engines"][engine][batch][direction]
                assert len(rec["repeats_seconds"]) == 2 and rec["seconds"] in rec["repeats_seconds"]
                assert rec["images_per_s"] == pytest.approx(2 / rec["seconds"])
                assert rec["mpx_per_s"] == pytest.approx(2 * 768 * 512 / 1e6 / rec["seconds"])
                assert set(rec["stages"]) == {"io", "network", "quantize", "entropy", "container"}
                assert all(v >= 0 for v in rec["stages"].values()) and rec["stages"]["network"] > 0
                assert rec["stages"]["entropy"] > 0 and rec["stages"]["container"] > 0
                assert sum(rec["stages"].values()) <= rec["seconds"]
    arch = result["bundle"]["architecture"]
    enc, dec = factorized_macs(arch["n"], arch["m"], 512, 768)
    # kodim03 is 768x512, kodim07 512x768: the same count either way round.
    assert result["macs"]["encoder"]["total"] == 2 * enc and result["macs"]["decoder"]["total"] == 2 * dec
    assert cpu["peak"]["macs_per_s"] > 0 and cpu["peak"]["threads"] == 2
    # measured before and after the timed passes; the peak is the faster per size, so no lower than either
    before, after = cpu["peak"]["measurements_macs_per_s"]
    assert cpu["peak"]["macs_per_s"] == max(cpu["peak"]["per_size"].values()) >= max(before, after)
    eff = cpu["efficiency"]["onnxruntime"]["batch_1"]
    for role in ("encoder", "decoder"):
        assert eff[role]["macs_per_s"] == pytest.approx(eff[role]["macs"] / eff[role]["network_seconds"])
        assert eff[role]["percent_of_peak"] == pytest.approx(100 * eff[role]["macs_per_s"] / cpu["peak"]["macs_per_s"])
    ratios = cpu["ratios"]["batch_1"]
    for key in ("compress_onnxruntime_over_torch", "decompress_onnxruntime_over_torch",
                "compress_network_onnxruntime_over_torch", "compress_onnxruntime_over_jpeg",
                "decompress_onnxruntime_over_webp"):
        assert ratios[key] > 0
    assert ratios["compress_onnxruntime_over_torch"] == pytest.approx(
        cpu["engines"]["torch"]["batch_1"]["compress"]["seconds"] / cpu["engines"]["onnxruntime"]["batch_1"]["compress"]["seconds"])
    # Rate and quality of the run are those of the codec itself (recomputed here outside the bench).
    from PIL import Image

    from aectl.runtime import Codec
    from aectl.runtime.metrics import bpp, psnr

    codec, rates, psnrs = Codec(bundle, provider="cpu"), [], []
    for p in sorted(two_images.iterdir()):
        original = np.asarray(Image.open(p).convert("RGB"))
        data = codec.compress(p)
        rates.append(bpp(len(data), original.shape[1], original.shape[0]))
        psnrs.append(psnr(original, np.asarray(codec.decompress(data))))
    assert result["rate"]["bpp"] == pytest.approx(np.mean(rates)) and result["rate"]["psnr"] == pytest.approx(np.mean(psnrs))
    for name in ("jpeg", "webp"):
        base = result["baselines"][name]
        assert base["bpp"] > 0 and base["compress"]["seconds"] > 0 and len(base["qualities"]) == 2
    # The human-readable form, on a console narrower than its table (a pipe or a CI log gives rich 80 columns):
    # every row holds the figures of the run's JSON whole, none cut to fit.
    shown = tmp_path / "shown.json"
    text = aectl("bench", "-m", bundle, "--images", two_images, "--repeats", "1", "--batch-sizes", "1",
                 "--no-torch", "--baselines", "jpeg", "--save", shown, env={"COLUMNS": "60"}).stdout
    assert "throughput on cpu" in text and "GMAC/s" in text and "% of peak" in text and "\u2026" not in text
    header = " ".join(text.split())  # as the narrow console wraps it
    assert " on 2 images (" in header and ", 2 threads, 1 repeat (median pass)" in header, text  # was "1 repeats"
    assert_rows_shown(json.loads(shown.read_text()), text)


def assert_rows_shown(result: dict, text: str) -> None:
    """Each engine's and baseline's row of `aectl bench`'s table is in `text`, as the JSON's figures."""
    rows = {tuple(line.split()) for line in text.splitlines()}
    shares = ("io", "network", "quantize", "entropy", "container")
    for engine, runs in result["providers"]["cpu"]["engines"].items():
        for batch, rec in runs.items():
            for direction, r in rec.items():
                assert ("ort" if engine == "onnxruntime" else engine, batch.split("_")[1], direction,
                        f"{r['mpx_per_s']:.2f}", f"{r['images_per_s']:.2f}",
                        *(f"{100 * r['shares'][k]:.1f}" for k in shares)) in rows, (engine, batch, direction, text)
    for name, base in result["baselines"].items():
        for direction in ("compress", "decompress"):
            r = base[direction]
            assert (name, "1", direction, f"{r['mpx_per_s']:.2f}", f"{r['images_per_s']:.2f}") in rows, text


def test_bench_without_a_model_measures_the_default_one(two_images, tmp_path):
    """Without -m, bench measures the bundle `aectl compress` uses without -m (the default quality), not the
    first shipped folder by name. --no-peak skips the matmul peak's seconds, and the tables say so. A hidden
    file is passed over (a macOS copy's `._kodim03.png` sorted first and ended the run as an unreadable image)."""
    import shutil

    from aectl.runtime.registry import shipped_bundle

    images = tmp_path / "images"
    shutil.copytree(two_images, images)
    (images / "._kodim03.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    saved = tmp_path / "bench.json"
    text = aectl("bench", "--images", images, "--limit", "1", "--repeats", "1", "--batch-sizes", "1",
                 "--no-torch", "--baselines", "", "--no-peak", "--save", saved).stdout
    result = json.loads(saved.read_text())
    assert Path(result["config"]["bundle"]).resolve() == shipped_bundle().resolve()
    assert result["images"]["count"] == 1
    cpu = result["providers"]["cpu"]
    assert cpu["peak"] == {"skipped": "not measured (--no-peak)"}
    rates = cpu["efficiency"]["onnxruntime"]["batch_1"]
    assert all(r["macs_per_s"] > 0 and r["percent_of_peak"] is None for r in rates.values())
    assert "matmul peak: skipped, not measured (--no-peak)" in text.splitlines() and "% of peak" not in text
    # -q picks another shipped quality, as compress's does; one that does not ship is refused before any work
    aectl("bench", "--images", images, "-q", 1, "--limit", "1", "--repeats", "1", "--batch-sizes", "1", "--no-torch",
          "--baselines", "", "--no-peak", "--save", saved, "--force")
    assert Path(json.loads(saved.read_text())["config"]["bundle"]).resolve() == shipped_bundle(1).resolve()
    missing = aectl("bench", "--images", images, "-q", 9, check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: -q 9: no shipped model at that quality; "
                                                                 "shipped: "), missing.stderr


def _computed_conv_weights(path: Path) -> int:
    """Conv nodes of an ONNX file whose weight the graph computes instead of holding as an initializer."""
    import onnx

    graph = onnx.load(str(path)).graph
    produced = {out for node in graph.node for out in node.output}
    return sum(node.op_type == "Conv" and node.input[1] in produced for node in graph.node)


def test_models_of_96_channels_export_folded_and_rebuild_in_torch(photos, kodak, tmp_path, monkeypatch):
    """From 96 channels the exporter's own constant folding (8192 elements at most) left GDN's gamma computed
    in-graph from its raw parameter; export now folds it, so both files hold plain Conv weights. torch eager
    (bench's torch column, train --init-from) rebuilds such a model exactly, and also one exported as before
    (it crashed on those with a KeyError)."""
    from aectl.export import onnx_export
    from aectl.runtime import Codec
    from aectl.train.loop import TrainConfig, train
    from aectl.train.torch_ref import TorchNetwork

    run, bundle, before = tmp_path / "run", tmp_path / "bundle", tmp_path / "before"
    train(TrainConfig(preset="factorized", channels=(96, 128), data=str(photos), out=str(run), steps=1, batch_size=1,
                      crop=32, fit_steps=1, seed=0, threads=2), progress=False, log=lambda *_: None)
    onnx_export.export_bundle(run, bundle, log=lambda *a: None)
    assert _computed_conv_weights(bundle / "encoder.onnx") == _computed_conv_weights(bundle / "decoder.onnx") == 0
    monkeypatch.setattr(onnx_export, "FOLD_LIMIT", 8192)  # the exporter's own limit: a bundle as exported before
    onnx_export.export_bundle(run, before, log=lambda *a: None)
    assert _computed_conv_weights(before / "encoder.onnx") == 3  # every GDN's gamma computed, none an initializer
    crop = np.asarray(Image.open(kodak / "kodim03.png").convert("RGB"))[:64, :96]
    x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32) / 255
    for folder in (bundle, before):
        diff = TorchNetwork(folder, threads=2).max_difference(Codec(folder, provider="cpu").network, x)
        assert diff["encoder_rel_diff"] <= 1e-4 and diff["decoder_abs_diff"] <= 1e-4, (folder.name, diff)


def test_bench_skips_torch_where_it_cannot_import(trained, two_images):
    _, bundle = trained["factorized"]
    code = f"""
import json
from aectl.perf.bench import BenchConfig, run_bench
r = run_bench(BenchConfig({str(bundle)!r}, {str(two_images)!r}, repeats=1, batch_sizes=(1,), baselines=(), limit=1,
                          peak=False))
assert 'torch' not in sys.modules
import os
os.environ["COLUMNS"] = "60"  # the tables' console: narrower than the reason
from aectl.cli.show import show_bench
show_bench(r)
print(json.dumps(r["providers"]["cpu"]["engines"]["torch"]))
"""
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    reason = json.loads(proc.stdout.strip().splitlines()[-1])["skipped"]
    assert "torch not importable" in reason
    # The tables say why, whole, on one line of their own.
    assert f"torch on cpu: skipped, {reason}" in proc.stdout.splitlines()


def test_a_batch_size_given_twice_is_timed_once():
    """`--batch-sizes 1,1` timed batch size 1 twice and kept one result (a helper's review)."""
    from aectl.cli.main import _batch_sizes

    assert _batch_sizes("1,1,8,1") == (1, 8) and _batch_sizes("8,1") == (8, 1)


def test_bench_bad_inputs_are_one_line_errors(trained, two_images, tmp_path):
    from aectl.runtime.providers import import_ort

    _, bundle = trained["factorized"]
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "gone.png").symlink_to(tmp_path / "missing.png")  # passed over without a word: "no images found"
    long = tmp_path / "long"  # WebP's sides are 14 bits: found after all the timing, the results lost
    long.mkdir()
    Image.new("RGB", (16400, 176), (90, 120, 150)).save(long / "l.png")
    # Each case's own message and exit status (2 where the parser refuses): a later failure (no images found,
    # an internal error) would also be one `error:` line. Messages ending in "\n" are whole; the thread count's
    # bound and the CUDA message's list of providers depend on the machine.
    not_a_bundle = f"{tmp_path}: no manifest.json here; is this a bundle made by `aectl export`?\n"
    cases = [
        (("--images", tmp_path / "missing"), 1, f"--images {tmp_path / 'missing'}: not a directory\n"),
        (("--images", tmp_path), 1, f"--images {tmp_path}: no images found\n"),  # a folder without images
        (("--images", linked), 1, f"{linked / 'gone.png'}: a symlink to a missing file\n"),
        (("--images", long, "--baselines", "webp", "--no-torch", "--no-peak"), 1,
         f"{long / 'l.png'} is 16400x176: webp codes sides of at most 16383 pixels; leave webp out of the baselines "
         "for it\n"),
        (("--images", two_images, "--provider", "tpu"), 1, "--provider 'tpu': choose cpu, cuda or all\n"),
        (("--images", two_images, "--batch-sizes", "0,8"), 2, "Invalid value: batch sizes must be positive\n"),
        (("--images", two_images, "--batch-sizes", "one"), 2,
         "Invalid value: expected comma-separated batch sizes, e.g. 1,8\n"),
        (("--images", two_images, "--baselines", "gif"), 1, "unknown baseline(s) gif; choose from jpeg, webp\n"),
        (("--images", two_images, "-m", tmp_path), 1, not_a_bundle),
        (("--images", two_images, "-m", bundle, "-q", "1"), 1, "give -m BUNDLE or -q QUALITY, not both\n"),
        (("--images", two_images, "-q", "9", "-m", bundle), 1, "give -m BUNDLE or -q QUALITY, not both\n"),
        (("--images", two_images, "--limit", "0"), 1, "--limit must be positive\n"),
        # bench sets torch's and onnxruntime's counts: the shared message offered 0, which bench refuses
        (("--images", two_images, "--threads", "0"), 1, "--threads 0: give 1.."),
        (("--images", two_images, "--threads", "10000"), 1, "--threads 10000: give 1.."),
    ]
    if "CUDAExecutionProvider" not in import_ort().get_available_providers():
        cases.append((("--images", two_images, "--provider", "cuda"), 1,
                      "--provider cuda: this onnxruntime has no CUDA provider"))
    for args, code, message in cases:
        if "-m" not in args:
            args = ("-m", bundle) + args
        proc = aectl("bench", *args, check=False)
        assert proc.returncode == code and proc.stderr.count("\n") == 1, (args, proc.returncode, proc.stderr)
        assert proc.stderr.startswith(f"error: {message}") and "or 0" not in proc.stderr, (args, proc.stderr)


def test_bench_measures_against_the_pixels_the_codec_compresses(trained, kodak, tmp_path):
    """bench's rate, PSNR and Pillow baselines use the image as the codec reads it: upright (EXIF rotation
    applied) and 16-bit grayscale scaled to 8 bits, so such files measure exactly as their plain 8-bit upright
    twins. Reading with a plain convert("RGB") crashed on a rotated non-square photo after all the timing, and
    clipped a 16-bit image to white on both sides (PSNR inf). The JSON stays strict where a PSNR is infinite
    (a flat image that JPEG codes losslessly): null, not Infinity."""
    _, bundle = trained["factorized"]
    photo = Image.open(kodak / "kodim07.png").convert("RGB").crop((0, 0, 200, 128))
    gray = photo.convert("L")
    plain, tagged = tmp_path / "plain", tmp_path / "tagged"
    plain.mkdir(), tagged.mkdir()
    photo.save(plain / "a.png")
    gray.save(plain / "b.png")
    photo.transpose(Image.Transpose.ROTATE_90).save(tagged / "a.png", exif=_orientation(6))  # shown upright
    Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257).save(tagged / "b.png")  # 16-bit
    results = [json.loads(aectl("bench", "-m", bundle, "--images", folder, "--repeats", "1", "--batch-sizes", "1",
                                "--no-torch", "--no-peak", "--baselines", "jpeg", "--json").stdout)
               for folder in (plain, tagged)]
    for key in ("bpp", "psnr"):
        assert results[1]["rate"][key] == pytest.approx(results[0]["rate"][key], rel=1e-9), key
        assert results[1]["baselines"]["jpeg"][key] == pytest.approx(results[0]["baselines"]["jpeg"][key], rel=1e-9)
    assert results[1]["images"]["sizes"] == {"200x128": 2}
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(flat / "flat.png")
    text = aectl("bench", "-m", bundle, "--images", flat, "--repeats", "1", "--batch-sizes", "1", "--no-torch",
                 "--no-peak", "--baselines", "jpeg", "--json").stdout
    result = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert result["baselines"]["jpeg"]["psnr"] is None  # lossless: infinite PSNR


def _orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def test_bench_says_why_it_has_no_mac_rates_without_onnx(trained, two_images):
    """Without onnx (the `bench` extra) the MAC rates were left out of the tables without a word."""
    _, bundle = trained["factorized"]
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'onnx':
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
from aectl.perf.bench import BenchConfig, run_bench
from aectl.cli.show import show_bench
show_bench(run_bench(BenchConfig({str(bundle)!r}, {str(two_images)!r}, repeats=1, batch_sizes=(1,), baselines=(),
                                 limit=1, peak=False, torch=False)))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("MAC rates: skipped, counting MACs needs the onnx package: pip install 'aectl[bench]'"
            in proc.stdout.splitlines())
