"""torch vs onnxruntime on real trained weights, for batch sizes and image sizes never traced at export."""
import numpy as np
import pytest
import torch

from aectl.export.parity import check_parity
from aectl.runtime.network import Network
from aectl.runtime.bundle import load_bundle
from aectl.train.checkpoint import build_from_checkpoint, load_checkpoint


def _model(run):
    return build_from_checkpoint(load_checkpoint(run))


@pytest.mark.parametrize("preset", ["seed-conv", "seed-dense", "factorized"])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_parity_across_batch_sizes(trained, preset, batch, kodak_image):
    run, bundle = trained[preset]
    model, spec = _model(run)
    side = spec.fixed_size or 64
    # Real pixels: crops of a Kodak image, one per batch element.
    x = np.stack([kodak_image[i * 40:i * 40 + side, i * 50:i * 50 + side].transpose(2, 0, 1) for i in range(batch)])
    report = check_parity(bundle, model, spec, images=x.astype(np.float32) / 255, shapes=[(batch, side, side)])
    assert report["max_abs_diff"] <= spec.tolerance


@pytest.mark.parametrize("size", [(80, 144), (208, 48)])
def test_seed_conv_parity_on_sizes_never_seen_at_export(trained, size, kodak_image):
    run, bundle = trained["seed-conv"]
    model, spec = _model(run)
    h, w = size
    x = kodak_image[:h, :w].transpose(2, 0, 1)[None].astype(np.float32) / 255
    net = Network(load_bundle(bundle), provider="cpu")
    with torch.no_grad():
        expected = model.decode(model.encode(torch.from_numpy(x))).clamp(0, 1).numpy()
    got = net.decode(net.encode(x))
    assert got.shape == (1, 3, h, w)
    assert np.abs(got - expected).max() <= spec.tolerance


def test_parity_check_refuses_a_mismatched_model(trained):
    """The check can fail: compare a bundle against weights that were changed after export."""
    from aectl.runtime.errors import AectlError

    run, bundle = trained["seed-conv"]
    model, spec = _model(run)
    with torch.no_grad():
        model.decoder[0].bias.add_(0.05)
    with pytest.raises(AectlError, match="parity failed"):
        check_parity(bundle, model, spec)


def test_bundle_records_hashes_and_model_id_in_onnx_metadata(trained):
    import onnx

    from aectl.runtime.bundle import sha256_file

    _, bundle = trained["factorized"]
    b = load_bundle(bundle)
    for role in ("encoder", "decoder"):
        path = bundle / f"{role}.onnx"
        assert sha256_file(path) == b.manifest["files"][role]["sha256"]
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert props["aectl.model_id"] == b.model_id
    assert not list(bundle.glob("*.data")), "bundle must be self-contained"
    assert b.manifest["input"]["stride"] == 16 and b.manifest["opset"] >= 18
    assert b.manifest["training"]["steps"] == 20


def test_model_id_names_the_function_not_the_exporter_notes(trained):
    """Re-exporting a checkpoint gives the same id: torch's notes (stack traces, shape constraints in an order
    that varies between processes) do not count, weights and tables do."""
    import onnx

    from aectl.export.onnx_export import _model_id
    from aectl.runtime.bundle import load_bundle

    _, folder = trained["factorized"]
    bundle = load_bundle(folder)
    encoder, decoder = onnx.load(str(folder / "encoder.onnx")), onnx.load(str(folder / "decoder.onnx"))
    reference = _model_id(encoder, decoder, bundle.entropy)
    for node in decoder.graph.node:
        onnx.helper.set_metadata_props(node, {"namespace": "elsewhere"})
    decoder.graph.metadata_props.reverse()
    decoder.producer_version = "another torch"
    assert _model_id(encoder, decoder, bundle.entropy) == reference
    weight = next(t for t in decoder.graph.initializer if t.dims and len(t.dims) == 4)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 1e-3
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    assert _model_id(encoder, decoder, bundle.entropy) != reference


def test_verify_tells_an_earlier_export_of_the_run_from_another_run(trained, tmp_path):
    """A bundle exported from a run that has trained on since was "not exported from" that run, as a bundle of
    another model is: verify now says which step the bundle holds and where the run is."""
    import shutil

    from aectl.export.parity import verify_bundle
    from aectl.runtime.errors import AectlError
    from aectl.train.loop import train
    from aectl.train.run_options import TrainConfig

    run, bundle = trained["factorized"]
    later = tmp_path / "run"
    shutil.copytree(run, later)
    step = load_checkpoint(later)["step"]
    train(TrainConfig(out=str(later), resume=True, steps=step + 2), progress=False, log=lambda *_: None)
    with pytest.raises(AectlError) as err:
        verify_bundle(bundle, later)
    assert str(err.value) == (f"{bundle} was exported at step {step}; {later} has trained on to step {step + 2} "
                              "since, so it no longer holds that bundle's weights: export it again")
    other, _ = trained["seed-conv"]
    with pytest.raises(AectlError, match=rf"^{bundle} was not exported from {other} \(entropy tables differ\)$"):
        verify_bundle(bundle, other)
