"""The onnxruntime session settings the runtime relies on, read back from real sessions of the shipped bundle:
both of a codec's sessions stop their workers' spinning when a run returns (otherwise the idle session's
workers take the cores from the other one's run: benchmarks/spinning_probe.py), and the setting changes no
output; and, unless asked otherwise, they get an explicit thread count, so that onnxruntime pins none of its
threads (benchmarks/threads_probe.py)."""
import numpy as np
import pytest

from aectl.runtime import Codec
from aectl.runtime.bundle import load_bundle
from aectl.runtime.cores import default_threads
from aectl.runtime.network import Network
from aectl.runtime.providers import Tuning
from aectl.runtime.registry import shipped_bundles

SHIPPED = shipped_bundles()
pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped bundle under models/")
KEY = "session.force_spinning_stop"


def config_entry(network: Network, role: str, key: str):
    options = network.session(role).get_session_options()
    try:
        return options.get_session_config_entry(key)
    except Exception:  # onnxruntime raises when the key was never set
        return None


def test_codec_sessions_stop_spinning_after_a_run_by_default():
    codec = Codec(SHIPPED[0], provider="cpu", threads=2)
    assert [config_entry(codec.network, role, KEY) for role in ("encoder", "decoder")] == ["1", "1"]


def test_spinning_left_to_onnxruntime_when_asked_and_outputs_unchanged(kodak_image):
    bundle = load_bundle(SHIPPED[0])
    spinning = Network(bundle, "cpu", 2, Tuning(stop_spinning=False))
    assert config_entry(spinning, "decoder", KEY) is None
    image = np.ascontiguousarray(kodak_image[:128, :192])
    default = Codec(bundle, provider="cpu", threads=2)
    other = Codec(bundle, provider="cpu", threads=2, network=spinning)
    blob = default.compress(image)
    assert other.compress(image) == blob
    assert np.array_equal(np.asarray(other.decompress(blob)), np.asarray(default.decompress(blob)))


@pytest.mark.parametrize("threads, expected", [(None, default_threads()), (0, 0), (1, 1)])
def test_sessions_get_an_explicit_thread_count_unless_asked_for_onnxruntimes(threads, expected):
    """No --threads: one per physical core, set explicitly (onnxruntime's own default, 0, pins its workers)."""
    codec = Codec(SHIPPED[0], provider="cpu", threads=threads)
    for role in ("encoder", "decoder"):
        assert codec.network.session(role).get_session_options().intra_op_num_threads == expected
