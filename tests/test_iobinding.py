"""The IOBinding path that serves CUDA runs here on the CPU provider: it must give exactly what a plain
session.run gives, reuse its device input while the shape repeats, and never hand back a buffer that a later
run overwrites. Uses the shipped bundle (a real trained model), so no training is needed."""
import threading

import numpy as np
import pytest

from aectl.runtime import Codec
from aectl.runtime.bundle import load_bundle
from aectl.runtime.network import Network
from aectl.runtime.registry import shipped_bundles

SHIPPED = shipped_bundles()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped bundle under models/")

SHAPES = [(1, 3, 64, 96), (1, 3, 64, 96), (3, 3, 64, 96), (1, 3, 96, 64), (1, 3, 64, 96)]


@pytest.fixture(scope="module")
def network():
    return Network(load_bundle(SHIPPED[0]), provider="cpu", threads=1)


def plain_run(net: Network, role: str, array: np.ndarray) -> np.ndarray:
    session = net.session(role)
    return session.run(None, {session.get_inputs()[0].name: array})[0]


def test_binding_equals_plain_run_and_keeps_earlier_results(network):
    rng = np.random.default_rng(0)
    kept = []
    for shape in SHAPES:
        x = rng.random(shape, dtype=np.float32)
        y = network.encode(x)
        y_hat = network.dequantize(network.quantize(y))
        x_hat = network.decode(y_hat)
        kept.append((x, y, y_hat, x_hat))
    # Compared only after every run: an output buffer reused by a later run would show up here.
    for x, y, y_hat, x_hat in kept:
        assert np.array_equal(y, plain_run(network, "encoder", x))
        assert np.array_equal(x_hat, plain_run(network, "decoder", y_hat))
        assert x_hat.shape == x.shape


def test_device_input_is_reused_while_the_shape_repeats(network):
    binding = network.binding("encoder")
    x = np.random.default_rng(1).random((2, 3, 32, 48), dtype=np.float32)
    network.encode(x)
    first = binding.input
    network.encode(x[::-1].copy())
    assert binding.input is first and first.data_ptr() == binding.input.data_ptr()
    network.encode(x[:1])
    assert binding.input is not first and tuple(binding.input.shape()) == (1, 3, 32, 48)
    assert binding.device == "cpu" and network.binding("encoder") is binding
    assert binding.binding.get_outputs()[0].device_name().lower() == "cpu"


def test_threads_get_their_own_binding(network):
    rng = np.random.default_rng(2)
    inputs = [rng.random((1, 3, 32 * (1 + i % 3), 48), dtype=np.float32) for i in range(8)]
    expected = [plain_run(network, "encoder", x) for x in inputs]
    results, bindings = [None] * len(inputs), [None] * len(inputs)

    def work(i):
        for _ in range(3):
            results[i] = network.encode(inputs[i])
        bindings[i] = network.binding("encoder")  # kept alive, so identities stay distinct

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(r, e) for r, e in zip(results, expected))
    assert len({id(b) for b in bindings}) == len(inputs)


def test_batch_of_same_size_images_equals_one_by_one(kodak):
    codec = Codec(SHIPPED[0], provider="cpu", threads=1)
    paths = sorted(kodak.glob("*.png"))[:3]
    batch = codec.compress_batch(paths)
    assert batch == [codec.compress(p) for p in paths]
    images = codec.decompress_batch(batch)
    assert all(np.array_equal(np.asarray(a), np.asarray(codec.decompress(b))) for a, b in zip(images, batch))
