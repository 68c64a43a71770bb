"""The onnxruntime session settings the runtime relies on, read back from real sessions of the shipped bundle:
both of a codec's sessions stop their workers' spinning when a run returns (otherwise the idle session's
workers take the cores from the other one's run: benchmarks/spinning_probe.py), and the setting changes no
output; and, unless asked otherwise, they get an explicit thread count, so that onnxruntime pins none of its
threads (benchmarks/threads_probe.py); and they share one CPU arena."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aectl.runtime import Codec
from aectl.runtime.bundle import load_bundle
from aectl.runtime.cores import default_threads
from aectl.runtime.network import Network
from aectl.runtime.providers import Tuning
from aectl.runtime.registry import shipped_bundles, shipped_qualities

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


SECOND_CODEC = """
import json, sys
from PIL import Image
from aectl.runtime import Codec

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20

image = Image.open(sys.argv[1]).convert("RGB").resize((1024, 1024))
start, grown, kept = rss_mb(), [], []
for bundle in sys.argv[2:]:
    codec = Codec(bundle, provider="cpu", threads=2)
    codec.decompress(codec.compress(image))
    kept.append(codec)  # as rate control keeps each quality it tried
    grown.append(rss_mb() - start)
print(json.dumps(grown))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_codecs_share_one_cpu_arena(kodak, tmp_path):
    """Each session kept an arena of its own, sized by the largest image it had run: after a 1024 x 1024 image
    a second codec (rate control keeps every quality it tries) added as much memory as the first, ~630 MB.
    Sharing the process's arena, it adds little more than its weights."""
    levels = shipped_qualities()
    script = tmp_path / "second_codec.py"
    script.write_text(SECOND_CODEC)
    proc = subprocess.run([sys.executable, str(script), str(kodak / "kodim07.png"), str(levels[3]),
                           str(levels[4])], capture_output=True, text=True, check=True)
    first, both = json.loads(proc.stdout)
    assert both - first < first / 4, (first, both)
    codec = Codec(SHIPPED[0], provider="cpu")
    assert [config_entry(codec.network, role, "session.use_env_allocators") for role in ("encoder", "decoder")] \
        == ["1", "1"]
    own = Network(load_bundle(SHIPPED[0]), "cpu", 2, Tuning(shared_arena=False))  # freed with its sessions
    assert config_entry(own, "decoder", "session.use_env_allocators") is None
