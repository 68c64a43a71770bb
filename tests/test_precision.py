"""Reduced-precision decoders (aectl export --precision fp16|int8): each variant is held to its own stated
tolerance against the fp32 torch decoder, keeps the bitstream, and really is the precision it claims."""
import json
import os
import shutil
import subprocess

import numpy as np
import onnx
import pytest

from conftest import aectl_exe

VARIANTS = ("fp16", "int8")


@pytest.fixture(scope="module")
def variants(trained, photos, tmp_path_factory):
    from aectl.export.onnx_export import export_bundle

    run, _ = trained["factorized"]
    root = tmp_path_factory.mktemp("variants")
    out = {}
    for precision in VARIANTS:
        lines = []
        export_bundle(run, root / precision, precision=precision, calibration=photos, log=lines.append)
        out[precision] = root / precision
        (root / f"{precision}.log").write_text("\n".join(lines))
    return out


def test_bench_of_a_variant_skips_torch_with_the_reason(variants, kodak, capsys):
    """torch eager cannot run an int8 decoder's rounded weights as the model: bench runs onnxruntime and says
    why the torch column is missing (it stopped with an internal KeyError before). The int8 decoder's MAC rate
    is set against the fp32 matmul peak and says so (it can pass 100%; the line read "% of peak")."""
    from aectl.cli.show import show_bench
    from aectl.perf.bench import BenchConfig, run_bench

    r = run_bench(BenchConfig(str(variants["int8"]), str(kodak), repeats=1, batch_sizes=(1,), baselines=(), limit=1),
                  log=lambda *_: None)
    engines = r["providers"]["cpu"]["engines"]
    assert engines["onnxruntime"]["batch_1"]["decompress"]["seconds"] > 0
    assert "has an int8 decoder, whose weights are rounded" in engines["torch"]["skipped"]
    capsys.readouterr()
    show_bench(r)
    text = " ".join(capsys.readouterr().out.split())
    rates = r["providers"]["cpu"]["efficiency"]["onnxruntime"]["batch_1"]
    assert f"encoder {rates['encoder']['macs_per_s'] / 1e9:.1f} GMAC/s ({rates['encoder']['percent_of_peak']:.0f}% of " \
           "peak)" in text
    assert f"decoder {rates['decoder']['macs_per_s'] / 1e9:.1f} GMAC/s ({rates['decoder']['percent_of_peak']:.0f}% of " \
           "the fp32 peak; int8 network)" in text


@pytest.mark.parametrize("precision", VARIANTS)
def test_info_names_the_decoders_precision_and_its_own_parity(variants, precision):
    """`aectl info` on a variant bundle says which precision its decoder is, its opset where the conversion
    changed it (int8 QDQ needs 21; info gave only the traced graphs' 20) and how close that decoder came, not
    only the fp32 graphs' figure (all it showed before)."""
    manifest = json.loads((variants[precision] / "manifest.json").read_text())
    dec = manifest["files"]["decoder"]
    proc = subprocess.run([aectl_exe(), "info", str(variants[precision])], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "400"})  # one line per row
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"decoder: decoder.onnx ({precision}, {dec['bytes']} B" in text
    assert f"(fp32 graphs); {precision} decoder: max |torch fp32 - {precision}| {dec['parity']['max_abs_diff']:.2e} " \
           f"<= {dec['tolerance']['max_abs_diff']:g}, least PSNR {dec['parity']['min_psnr_db']:.1f} dB" in text
    own = dec["conversion"].get("opset", manifest["opset"])
    assert (precision == "int8") == (own != manifest["opset"])
    opset_row = next(line for line in text.splitlines() if " opset " in line)
    assert f" {manifest['opset']}{f' ({precision} decoder: {own})' if own != manifest['opset'] else ''} " in opset_row


@pytest.mark.parametrize("precision", VARIANTS)
def test_export_ends_on_the_variant_decoders_own_parity(variants, precision):
    """The last line export prints states the reduced decoder's parity, not only that of the fp32 graphs it
    replaced (which is all it said before)."""
    dec = json.loads((variants[precision] / "manifest.json").read_text())["files"]["decoder"]["parity"]
    last = (variants[precision].parent / f"{precision}.log").read_text().splitlines()[-1]
    assert last.startswith(f"wrote {variants[precision]} ") and "; fp32 parity max" in last
    assert last.endswith(f"; {precision} decoder max |torch fp32 - {precision}| = {dec['max_abs_diff']:.2e} "
                         f"<= {dec['tolerance']['max_abs_diff']:g}")


@pytest.mark.parametrize("precision", VARIANTS)
def test_variant_manifest_states_precision_tolerance_and_parity(trained, variants, precision):
    from aectl.runtime import load_bundle
    from aectl.train.zoo import get_preset

    _, fp32 = trained["factorized"]
    b, ref = load_bundle(variants[precision]), load_bundle(fp32)
    dec = b.manifest["files"]["decoder"]
    assert dec["precision"] == precision and b.manifest["files"]["encoder"]["precision"] == "fp32"
    assert dec["tolerance"] == get_preset("factorized").variant_tolerances[precision]
    assert dec["parity"]["max_abs_diff"] <= dec["tolerance"]["max_abs_diff"]
    assert dec["parity"]["min_psnr_db"] >= dec["tolerance"]["min_psnr_db"]
    assert len(dec["parity"]["cases"]) >= 2
    # The fp32 encoder and entropy tables of the same checkpoint. (The model id is not compared: two export
    # runs of one checkpoint can serialise the decoder graph differently, which changes the id.)
    assert b.entropy == ref.entropy
    weights = [{t.name: t.raw_data for t in onnx.load(str(folder / "encoder.onnx")).graph.initializer}
               for folder in (variants[precision], fp32)]
    assert weights[0] == weights[1]
    props = {p.key: p.value for p in onnx.load(str(variants[precision] / "decoder.onnx")).metadata_props}
    assert props["aectl.model_id"] == b.model_id
    assert not (variants[precision] / "decoder.fp32.onnx").exists()


@pytest.mark.parametrize("precision", VARIANTS)
def test_variant_keeps_the_bitstream_and_decodes_close_to_fp32(trained, variants, precision, kodak):
    from aectl.runtime import Codec, container
    from aectl.runtime.metrics import psnr

    _, fp32 = trained["factorized"]
    ref, var = Codec(fp32, provider="cpu"), Codec(variants[precision], provider="cpu")
    image = kodak / "kodim05.png"
    data, data_var = ref.compress(image), var.compress(image)
    # The same range-coded payload, byte for byte: only the header's model id may differ.
    assert container.parse(data_var)[1] == container.parse(data)[1] and len(data_var) == len(data)
    a, b = np.asarray(ref.decompress(data)), np.asarray(var.decompress(data_var))
    tol = var.bundle.manifest["files"]["decoder"]["tolerance"]
    assert psnr(a, b) >= tol["min_psnr_db"]
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 255 * tol["max_abs_diff"] + 1


def test_int8_decoder_is_quantised_except_gdn_and_the_output_conv_with_16_bit_latents(variants):
    from onnx import TensorProto

    from aectl.export.precision import gdn_nodes, output_conv

    model = onnx.load(str(variants["int8"] / "decoder.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    dq = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantised = [n for n in convs if n.input[0] in dq and n.input[1] in dq]
    assert len(quantised) == 3                     # the sub-pixel convolutions but the one producing the pixels
    names = set(gdn_nodes(model))
    last = output_conv(model)
    assert last == convs[-1].name and last not in names and convs[-1] not in quantised
    assert len(names) == 12 and all(n.name in names | {last} for n in convs if n not in quantised)
    # The integer latents go in as 16 bits (8 bits over their range would round them), the rest as 8.
    zero_points = {t.name: t.data_type for t in model.graph.initializer}
    first = dq[convs[0].input[0]]
    assert zero_points[first.input[2]] == TensorProto.UINT16
    assert all(zero_points[dq[n.input[0]].input[2]] == TensorProto.UINT8 for n in quantised[1:])
    manifest = json.loads((variants["int8"] / "manifest.json").read_text())
    conv = manifest["files"]["decoder"]["conversion"]
    assert conv["int8_convs"] == 3 and conv["fp32_convs"] == 4 and conv["uint16_tensors"] == ["y_hat"]
    # Standard ONNX only (opset 21 has 16-bit Q/DQ): no onnxruntime contrib ops or domains, so any runtime of
    # opset 21 can load it.
    assert {n.domain for n in model.graph.node} == {""} and conv["opset"] == 21
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 21)]
    onnx.checker.check_model(model, full_check=True)
    assert conv["method"].endswith("percentile 99.999")  # ranges from percentiles (histograms), not extremes
    assert conv["calibration"]["files"]


def test_fp16_decoder_keeps_gdn_in_fp32(variants):
    from onnx import TensorProto

    from aectl.export.precision import gdn_nodes

    model = onnx.load(str(variants["fp16"] / "decoder.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    produced = {o: n for n in model.graph.node for o in n.output}
    gdn = set(gdn_nodes(model))
    assert len(gdn) == 12

    def is_fp32(name: str) -> bool:
        if name in types:
            return types[name] == TensorProto.FLOAT
        node = produced[name]
        if node.op_type == "Cast":
            return next(a.i for a in node.attribute if a.name == "to") == TensorProto.FLOAT
        return node.name in gdn

    for node in model.graph.node:
        if node.name in gdn:         # every input of a GDN node is float32 (an fp32 tensor or a cast to it)
            assert all(is_fp32(i) for i in node.input if i), node.name
        elif node.op_type == "Conv":  # the sub-pixel convolutions hold fp16 weights
            assert types[node.input[1]] == TensorProto.FLOAT16, node.name
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_variant_parity_check_can_fail(trained, variants, photos):
    """The check is real: the same int8 file fails a tolerance it does not meet."""
    from aectl.export.parity import check_variant
    from aectl.runtime.errors import AectlError
    from aectl.train.data import find_images, load_rgb
    from aectl.train.checkpoint import build_from_checkpoint, load_checkpoint

    run, _ = trained["factorized"]
    model, preset = build_from_checkpoint(load_checkpoint(run))
    images = [load_rgb(p, 64) for p in find_images(photos)[1::2][:2]]
    check_variant(variants["int8"] / "decoder.onnx", model, preset, "int8", images)
    preset.variant_tolerances = {"int8": {"max_abs_diff": 1e-5, "min_psnr_db": 100.0}}
    with pytest.raises(AectlError, match="int8 parity failed"):
        check_variant(variants["int8"] / "decoder.onnx", model, preset, "int8", images)


def test_bad_precision_options_are_one_line_errors(trained, tmp_path):
    run, _ = trained["factorized"]
    for args in (("--precision", "int4"), ("--precision", "int8", "--calibration", tmp_path / "none"),
                 ("--precision", "fp16", "--ort")):
        proc = subprocess.run([aectl_exe(), "export", str(run), "-o", str(tmp_path / "b"), *map(str, args)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert not (tmp_path / "b").exists()


def test_photo_folder_errors_name_the_flag_and_the_folder(trained, variants, photos, tmp_path):
    """A missing folder of real photos is named as given, with the flag of the command at hand (export's
    --calibration, verify's --images), and a run whose training data has moved says so."""
    import torch

    from aectl.train.checkpoint import CHECKPOINT

    run, _ = trained["factorized"]
    missing, moved = tmp_path / "none", tmp_path / "moved-run"
    moved.mkdir()
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=False)
    ckpt["config"].update(data_path=str(missing), data=str(missing))
    torch.save(ckpt, moved / CHECKPOINT)
    # A subfolder that cannot be read (here a chain past PATH_MAX, which root cannot read either) was passed over:
    # export calibrated and fitted its classes on the photos it could read, and verify checked them, without a word.
    deep = tmp_path / "deep"
    deep.mkdir()
    for path in sorted(photos.iterdir())[:4]:
        shutil.copy(path, deep / path.name)
    fd = os.open(deep, os.O_RDONLY)
    for _ in range(22):
        os.mkdir("d" * 200, dir_fd=fd)
        fd, parent = os.open("d" * 200, os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    os.close(fd)
    unread = f"{deep}: cannot read folder "  # the folder's name is cut in the middle, to keep the line short
    from aectl.export.onnx_export import variant_images
    from aectl.runtime.errors import AectlError

    with pytest.raises(AectlError, match=r"File name too long; pass --calibration DIR$"):  # the run's own photos
        variant_images({"config": {"data_path": str(deep), "data": str(deep)}}, None)
    with pytest.raises(AectlError, match=f"^--images {deep}: cannot read folder {deep}/d"):  # verify's, in-process
        variant_images({}, deep, "--images")
    with pytest.raises(AectlError, match=f"^--calibration {deep}: cannot read folder {deep}/d"):  # the classes' fit
        from aectl.export.onnx_export import _fit_symbols
        _fit_symbols(None, None, {}, deep)
    cases = [(("export", run, "-o", tmp_path / "b", "--precision", "int8", "--calibration", deep),
              f"error: --calibration {unread}")]
    cases += [(("export", run, "-o", tmp_path / "b", "--precision", "int8", "--calibration", missing),
              f"error: --calibration {missing}: not a folder"),
             (("verify", variants["int8"], run, "--images", missing), f"error: --images {missing}: not a folder"),
             (("export", moved, "-o", tmp_path / "b", "--precision", "fp16"),
              f"error: the run's training data {missing} is not a folder here"),
             (("verify", variants["int8"], moved), f"error: the run's training data {missing} is not a folder here"),
             # Path("") is ".": they calibrated, fitted and checked on the working folder without a word
             (("export", run, "-o", tmp_path / "b", "--precision", "int8", "--calibration", ""),
              'error: --calibration "": give a folder'),
             (("export", run, "-o", tmp_path / "b", "--entropy-classes", "3", "--calibration", ""),
              'error: --calibration "": give a folder'),
             (("verify", variants["int8"], run, "--images", ""), 'error: --images "": give a folder')]
    for args, start in cases:
        proc = subprocess.run([aectl_exe(), *map(str, args)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1 and proc.stderr.startswith(start), (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        flag = "--images" if args[0] == "verify" else "--calibration"
        assert "PosixPath" not in proc.stderr and (flag in proc.stderr), proc.stderr
        assert "cannot read folder" not in proc.stderr or proc.stderr.endswith(": File name too long\n")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("precision", VARIANTS)
def test_verify_holds_a_variant_to_its_own_tolerance(trained, variants, photos, precision):
    """`aectl verify` on an fp16/int8 bundle and the run it came from: the fp32 encoder at the fp32 tolerance,
    the decoder at its precision's tolerance on real photos (the fp32 limit would refuse int8 outright)."""
    run, _ = trained["factorized"]
    proc = subprocess.run([aectl_exe(), "verify", str(variants[precision]), str(run), "--images", str(photos)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("ok:") and "encoder max" in lines[0]
    assert lines[1].startswith(f"ok: {precision} decoder within its tolerance")


def test_without_m_the_least_lossy_decoder_wins_in_one_folder(trained, variants, tmp_path, monkeypatch):
    """Variants share the fp32 model id (same bitstream). Folder names must not pick a lossier decoder (fp32,
    then fp16, then int8; with the fp32 one gone, the int8 one's name came first and it won); the first search
    folder holding the model still decides, so a variant there is used over an fp32 bundle in a later one."""
    from aectl.runtime import load_bundle
    from aectl.runtime.registry import find_bundle

    _, fp32 = trained["factorized"]
    model_id = load_bundle(fp32).model_id
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(variants["int8"], first / "a-int8")
    shutil.copytree(variants["fp16"], first / "b-fp16")
    shutil.copytree(fp32, first / "c-fp32")
    shutil.copytree(fp32, second / "fp32")
    monkeypatch.setenv("AECTL_BUNDLES", str(first))
    assert find_bundle(model_id).path == first / "c-fp32"
    shutil.rmtree(first / "c-fp32")
    monkeypatch.setenv("AECTL_BUNDLES", os.pathsep.join(map(str, (first, second))))
    assert find_bundle(model_id).path == first / "b-fp16"
    shutil.rmtree(first / "b-fp16")
    assert find_bundle(model_id).path == first / "a-int8"


def test_verify_runs_every_check_on_the_asked_provider(trained, variants, photos, tmp_path):
    """`verify --provider` reaches the decoder-only and the variant decoder checks too: they ran on the CPU
    whatever was asked, and said ok for a provider that does not exist. Each line names the provider its sessions
    ran on; that a GPU is asked for and used is tests/test_cuda.py's, where one runs."""
    from aectl.runtime.bundle import strip_bundle

    from aectl.export.parity import verify_bundle
    from aectl.runtime.errors import AectlError
    from aectl.runtime.providers import probe

    run, fp32 = trained["factorized"]
    stripped = [strip_bundle(fp32, tmp_path / "s-fp32").path, strip_bundle(variants["int8"], tmp_path / "s-int8").path]
    # A GPU provider that does not run here: the stripped bundles' checks (decoder-only, and the int8 variant's)
    # are the first to make a session, so they must fail on it. ("bogus" is refused by name before any check.)
    unusable = next((name for name in ("cuda", "tensorrt") if not probe(name)[0]), None)  # None: tests/test_cuda.py
    for bundle in stripped + [variants["int8"]]:
        args = [aectl_exe(), "verify", str(bundle), str(run), "--images", str(photos)]
        if unusable and bundle in stripped:  # in-process: the CLI's line for an AectlError is tested elsewhere
            # not in this build (the CLI words it --provider), installed but not usable, or failing to start
            with pytest.raises(AectlError, match=rf"^(provider='{unusable}': |(CUDA|TensorRT) provider (is "
                                                 r"installed but not usable|failed to start))"):
                verify_bundle(bundle, run, provider=unusable, images=photos)
        good = subprocess.run(args + ["--provider", "cpu"], capture_output=True, text=True, timeout=600)
        assert good.returncode == 0, good.stderr
        assert all(" on cpu" in line for line in good.stdout.strip().splitlines()), good.stdout
    # "auto" is reported as the provider it ran on ("ok: ... on auto" named none).
    auto = subprocess.run([aectl_exe(), "verify", str(fp32), str(run), "--provider", "auto"], capture_output=True,
                          text=True, timeout=600)
    ran = "cuda" if probe("cuda")[0] else "cpu"
    assert auto.returncode == 0 and all(f" on {ran}:" in line for line in auto.stdout.strip().splitlines()), auto


def test_verify_reads_the_decoders_precision_from_its_graph(trained, variants, tmp_path):
    """verify repeated the manifest's word: an fp32 decoder marked int8 said "ok: int8 decoder", an int8 graph
    in an fp16 bundle (hash updated) "ok: fp16 decoder"; an unknown precision was an internal KeyError."""
    from aectl.export.parity import verify_bundle
    from aectl.runtime.bundle import sha256_file
    from aectl.runtime.errors import AectlError

    run, fp32 = trained["factorized"]

    def copy(src, name, edit):
        bundle = tmp_path / name
        shutil.copytree(src, bundle)
        manifest = json.loads((bundle / "manifest.json").read_text())
        edit(bundle, manifest["files"]["decoder"])
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        return bundle

    def swap_in_int8(bundle, entry):
        shutil.copyfile(variants["int8"] / "decoder.onnx", bundle / "decoder.onnx")
        entry.update(sha256=sha256_file(bundle / "decoder.onnx"), bytes=(bundle / "decoder.onnx").stat().st_size)

    lie = copy(fp32, "lie", lambda _, entry: entry.update(precision="int8"))
    with pytest.raises(AectlError, match="the manifest says the decoder is int8, but decoder.onnx is an fp32 graph"):
        verify_bundle(lie, run)
    swapped = copy(variants["fp16"], "swapped", swap_in_int8)
    with pytest.raises(AectlError, match="the manifest says the decoder is fp16, but decoder.onnx is an int8 graph"):
        verify_bundle(swapped, run)
    for i, value in enumerate(("bf16", ["int8"])):
        odd = copy(fp32, f"odd{i}", lambda _, entry: entry.update(precision=value))
        with pytest.raises(AectlError, match="invalid manifest: files.decoder.precision must be fp32, fp16 or int8"):
            verify_bundle(odd, run)
