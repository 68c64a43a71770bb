"""The runtime imports and runs in a process where importing torch (or train/ or export/) raises."""
import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch' or name.startswith(('aectl.train', 'aectl.export')):
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], capture_output=True, text=True, timeout=300)


def test_blocker_really_blocks_torch():
    proc = run_blocked("import torch")
    assert proc.returncode != 0 and "blocked for this test" in proc.stderr


def test_runtime_decodes_without_torch(trained, tmp_path, kodak):
    _, bundle = trained["factorized"]
    code = f"""
import numpy as np
import aectl.runtime
from aectl.runtime import Codec
codec = Codec({str(bundle)!r}, provider="cpu")
x = np.random.default_rng(0).random((2, 3, 32, 48), dtype=np.float32)
out = codec.decode(codec.network.dequantize(codec.network.quantize(codec.encode(x))))
assert out.shape == (2, 3, 32, 48)
data = codec.compress({str(kodak / 'kodim02.png')!r})
image = codec.decompress(data)
assert image.size == (768, 512)
assert 'torch' not in sys.modules
print('ok', len(data))
"""
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_cli_decompress_without_torch(trained, tmp_path, kodak):
    from aectl.runtime import Codec

    _, bundle = trained["seed-conv"]
    (tmp_path / "a.aec").write_bytes(Codec(bundle, provider="cpu").compress(kodak / "kodim03.png"))
    code = f"""
sys.argv = ['aectl', 'decompress', {str(tmp_path / 'a.aec')!r}, '-m', {str(bundle)!r}, '-o', {str(tmp_path / 'a.png')!r}]
from aectl.cli.main import main
try:
    main()
except SystemExit as e:
    assert e.code == 0, e.code
"""
    proc = run_blocked(code)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a.png").is_file()


def test_export_refuses_a_mistyped_option_before_torch_loads(tmp_path):
    """`aectl export` refused a mistyped option only after importing torch and onnx (3 s here); the options'
    own errors now come first, here in a process where importing either raises."""
    blocker = BLOCKER.replace("name.startswith(('aectl.train', 'aectl.export'))", "name.split('.')[0] == 'onnx'")
    missing = tmp_path / "none"
    for args, message in [(("--precision", "int4"), "--precision 'int4': choose one of fp32, fp16, int8"),
                          (("--precision", "fp16", "--ort"), "--ort is only made for fp32 decoders"),
                          (("--precision", "int8", "--calibration", missing), f"--calibration {missing}: not a folder"),
                          (("--calibration", tmp_path), "--calibration picks the photos of an fp16/int8 export")]:
        argv = ["aectl", "export", str(tmp_path / "run"), "-o", str(tmp_path / "b"), *map(str, args)]
        proc = subprocess.run([sys.executable, "-c", f"{blocker}\nsys.argv = {argv!r}\n"
                               "from aectl.cli.main import main\nmain()"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: {message}"), (args, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# torch is found, but importing it raises: what a command refuses before it loads torch says so, not this.
TORCH_RAISES = """
import importlib.machinery
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        raise ImportError('blocked for this test: ' + module.__name__)
sys.meta_path.insert(0, Block())
"""


def run_cli_torch_raises(*args) -> subprocess.CompletedProcess:
    argv = ["aectl", *map(str, args)]
    return subprocess.run([sys.executable, "-c", f"{TORCH_RAISES}\nsys.argv = {argv!r}\n"
                           "from aectl.cli.main import main\nmain()"], capture_output=True, text=True, timeout=300)


def test_train_refuses_a_mistyped_option_before_torch_loads(tmp_path, photos):
    """`aectl train` refused a mistyped option only after importing torch (1.3 s here, more on a slower machine);
    the options are checked first, here in a process where torch is found but importing it raises."""
    new = ("--data", photos, "--out", tmp_path / "run")
    for args, message in [(("--preset", "bogus", *new), "unknown preset 'bogus'; choose one of"),
                          (("--preset", "factorized", "--steps", "0", *new), "--steps must be positive"),
                          (("--preset", "seed-conv", "--lr", "-1", *new), "--lr -1: give a positive learning rate"),
                          (("--preset", "factorized", "-q", "9", *new), "--quality 9"),
                          (("--preset", "seed-dense", "--batch-size", "1", *new), "--batch-size 1: seed-dense needs"),
                          (("--preset", "seed-conv", "--init-from", tmp_path / "none", *new), "--init-from"),
                          (("--out", tmp_path / "run"), "a new run needs --preset and --data"),
                          (("--out", tmp_path / "run", "--resume", "--force"), "--force starts a new run")]:
        proc = run_cli_torch_raises("train", *args)
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: {message}"), (args, proc.stderr)
        assert "blocked for this test" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_verify_refuses_an_unknown_provider_before_torch_loads(trained):
    """`verify --provider bogus` was refused only after importing torch and the exporter (2.9 s here)."""
    run, bundle = trained["factorized"]
    proc = run_cli_torch_raises("verify", bundle, run, "--provider", "bogus")
    assert proc.returncode == 1 and proc.stderr == "error: unknown provider 'bogus'; choose one of auto, cpu, cuda, " \
        "tensorrt\n", proc.stderr


def test_export_refuses_a_class_count_before_torch_loads(trained, tmp_path):
    """`export --entropy-classes 1` was refused after torch, onnx and the checkpoint had loaded."""
    run, _ = trained["factorized"]
    proc = run_cli_torch_raises("export", run, "-o", tmp_path / "b", "--entropy-classes", "1")
    assert proc.returncode == 1 and proc.stderr == "error: --entropy-classes 1: give 2..64, or 0 for none\n", \
        proc.stderr
    assert not (tmp_path / "b").exists()
