"""One factory for onnxruntime sessions, so provider choice and its checks live in a single place (as rembg
does). Asking for CUDA where it cannot run is an error, never a silent CPU session: onnxruntime-gpu lists the
CUDA provider as available even when the CUDA libraries are missing, then quietly builds a CPU-only session,
so we check `session.get_providers()` after creating it."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from importlib import metadata

from aectl.runtime.errors import AectlError

PROVIDER_NAMES = ("auto", "cpu", "cuda")
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "onnxruntime-silicon", "ort-nightly", "ort-nightly-gpu")
EXECUTION_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def installed_distributions() -> dict[str, str]:
    """onnxruntime distributions installed in this environment, name -> version."""
    found = {}
    for name in ORT_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@functools.lru_cache(maxsize=1)
def import_ort():
    """Import onnxruntime once, warning when two distributions overwrite each other's files."""
    dists = installed_distributions()
    if "onnxruntime" in dists and "onnxruntime-gpu" in dists:
        warnings.warn("both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's files. "
                      "Uninstall both and install one (aectl[cpu] or aectl[gpu]).", RuntimeWarning, stacklevel=2)
    try:
        import onnxruntime
    except ImportError:
        raise AectlError("onnxruntime is not installed: pip install 'aectl[cpu]' (or 'aectl[gpu]' for CUDA)") from None
    return onnxruntime


OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")


@dataclass(frozen=True)
class Tuning:
    """The onnxruntime knobs `aectl bench` and benchmarks/ort_knobs.py vary; the defaults are what the runtime
    uses. See https://onnxruntime.ai/docs/performance/tune-performance/ for each knob.

    optimization: graph optimisation level applied when the session loads. Bundles ship unoptimised graphs
        (ORT_ENABLE_ALL bakes in machine-specific layouts such as NCHWc), so "all" here is done per machine.
    mem_arena: onnxruntime's CPU memory arena. On: without it every large intermediate is mmap'ed, page-faulted
        and returned on every run (benchmarks/README.md: the arena made the networks 1.3-1.5x faster here).
        The arena keeps the largest buffers of every input shape it has seen, so runs larger than
        SHRINK_ABOVE_PIXELS (tiles of big images, big batches) hand their memory back after the run
        (providers.run_options); peak memory stays bounded by the run size.
    optimized_model_path: also write the graph as optimised (use with "extended" only, which is portable).
    """

    optimization: str = "all"
    mem_arena: bool = True
    optimized_model_path: str | None = None


DEFAULT_TUNING = Tuning()
SHRINK_ABOVE_PIXELS = 1 << 20  # input pixels of one run above which the arena is shrunk after the run


def run_options(tuning: Tuning, pixels: int):
    """RunOptions that return the CPU arena's memory after a large run ("memory.enable_memory_arena_shrinkage",
    https://onnxruntime.ai/docs/get-started/with-c.html), or None for runs that keep it."""
    if not tuning.mem_arena or pixels <= SHRINK_ABOVE_PIXELS:
        return None
    opts = import_ort().RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


def session_options(threads: int | None = None, tuning: Tuning = DEFAULT_TUNING):
    ort = import_ort()
    if tuning.optimization not in OPTIMIZATION_LEVELS:
        raise AectlError(f"unknown graph optimisation level {tuning.optimization!r}; "
                         f"choose one of {', '.join(OPTIMIZATION_LEVELS)}")
    opts = ort.SessionOptions()
    levels = ort.GraphOptimizationLevel
    opts.graph_optimization_level = {"disabled": levels.ORT_DISABLE_ALL, "basic": levels.ORT_ENABLE_BASIC,
                                     "extended": levels.ORT_ENABLE_EXTENDED, "all": levels.ORT_ENABLE_ALL
                                     }[tuning.optimization]
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = tuning.mem_arena
    if tuning.optimized_model_path:
        opts.optimized_model_filepath = tuning.optimized_model_path
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def _cuda_options() -> dict:
    # HEURISTIC avoids re-tuning cuDNN for every new image size; TF32 off keeps parity with fp32 torch.
    return {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}


def create_session(model: str | bytes, provider: str = "auto", threads: int | None = None,
                   tuning: Tuning = DEFAULT_TUNING):
    """An InferenceSession on exactly the asked provider (auto: CUDA if it really works, else CPU)."""
    if provider not in PROVIDER_NAMES:
        raise AectlError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    ort = import_ort()
    available = ort.get_available_providers()
    opts = session_options(threads, tuning)
    if provider in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        try:
            session = ort.InferenceSession(model, sess_options=opts,
                                           providers=[("CUDAExecutionProvider", _cuda_options()), "CPUExecutionProvider"])
        except Exception as exc:
            if provider == "cuda":
                raise AectlError(f"CUDA provider failed to start: {exc}".splitlines()[0]) from None
        else:
            if session.get_providers()[0] == "CUDAExecutionProvider":
                return session
            if provider == "cuda":
                raise AectlError("CUDA provider is installed but not usable here (CUDA or cuDNN libraries missing, "
                                 "or no GPU); onnxruntime fell back to CPU. Use --provider cpu or fix the CUDA setup")
    elif provider == "cuda":
        raise AectlError("--provider cuda: this onnxruntime has no CUDA provider "
                         f"(available: {', '.join(available)}); install aectl[gpu] on a machine with a GPU")
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise AectlError(f"onnxruntime cannot load the model: {exc}".splitlines()[0]) from None


def usable_providers() -> dict[str, str]:
    """For `aectl doctor`: which providers really create a working session here, by trying each."""
    import numpy as np

    ort = import_ort()
    results = {}
    probe = _identity_model()
    for name in ("cpu", "cuda"):
        if EXECUTION_PROVIDERS[name] not in ort.get_available_providers():
            results[name] = "not in this onnxruntime build"
            continue
        try:
            session = create_session(probe, name)
            out = session.run(None, {"x": np.ones((1, 2), np.float32)})[0]
            results[name] = "works" if float(out.sum()) == 4.0 else "wrong result"
        except AectlError as exc:
            results[name] = f"fails: {exc}"
    return results


def _identity_model() -> bytes:
    """A one-node ONNX model (y = x + x), serialized ahead of time so doctor needs no onnx package."""
    return bytes.fromhex(
        "08081205616563746c3a3d0a0e0a01780a017812017922034164641201675a130a0178120e0a0c080112080a0208010a"
        "02080262130a0179120e0a0c080112080a0208010a02080242040a00100d")
