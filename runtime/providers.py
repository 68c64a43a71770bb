"""One factory for onnxruntime sessions, so provider choice and its checks live in a single place (as rembg
does). Asking for CUDA or TensorRT where it cannot run is an error, never a silent CPU session:
onnxruntime-gpu lists the CUDA and TensorRT providers as available even when their libraries are missing,
then quietly builds a session on the next provider in the list, so we check `session.get_providers()` after
creating it."""
from __future__ import annotations

import functools
import os
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from aectl.runtime.cores import default_threads
from aectl.runtime.errors import AectlError, is_whole_number, option
from aectl.runtime.tiling import HALO, MAX_TILE

PROVIDER_NAMES = ("auto", "cpu", "cuda", "tensorrt")
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                     "onnxruntime-silicon", "ort-nightly", "ort-nightly-gpu")
EXECUTION_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                       "tensorrt": "TensorrtExecutionProvider"}
GPU_DEVICE_ID = 0  # one GPU per process; CUDA_VISIBLE_DEVICES picks which


def provider_name(execution_provider: str) -> str:
    """aectl's name ("cpu", "cuda", "tensorrt") of an onnxruntime execution provider; others as they are."""
    return next((name for name, ep in EXECUTION_PROVIDERS.items() if ep == execution_provider), execution_provider)


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
    except ImportError as exc:
        cause = exc  # Ctrl-C or SIGTERM during the import, which pybind11 turns into "initialization failed"
        while cause is not None and not isinstance(cause, KeyboardInterrupt):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise KeyboardInterrupt from None
        if dists:  # installed, but its import fails (a missing shared library, a numpy ABI mismatch)
            raise AectlError(f"{' and '.join(dists)} installed, but `import onnxruntime` fails: {exc}") from None
        raise AectlError("onnxruntime is not installed: pip install 'aectl[cpu]' (or 'aectl[gpu]' for CUDA)") from None
    except Exception as exc:  # a broken build raising something else at import: the environment's fault, said so
        raise AectlError(f"`import onnxruntime` raised {type(exc).__name__}: {exc}; reinstall it "
                         "(pip install --force-reinstall 'aectl[cpu]')") from None
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
        One arena serves every session of the process (shared_arena), not one per session: a session keeps
        its largest buffers between runs, so each codec loaded held its own ~630 MB after a 1024 x 1024 image.
        The arena keeps the largest buffers of every input shape it has seen, so runs larger than
        SHRINK_ABOVE_PIXELS (big batches through Network; the codec's CPU runs stay under it) hand their memory
        back after the run (providers.run_options), at the price of page-faulting it again on the next run;
        peak memory stays bounded by the run size.
    optimized_model_path: also write the graph as optimised (use with "extended" only, which is portable).
    shared_arena: with mem_arena, sessions share the process's one CPU arena (shared_cpu_arena). It lives as
        long as the process (onnxruntime has no call to release it), so what the last runs held stays after
        every codec is dropped: 510 MB against 148 after a 1024 x 1024 image. Off: each session has its own,
        freed with it, for a host that loads a codec for a while and must give the memory back.
    stop_spinning: onnxruntime's "session.force_spinning_stop". Each session has its own intra-op thread pool,
        whose workers keep spinning for tens of milliseconds after a run; a codec alternates two sessions
        (encoder, decoder), and on a machine with few cores the idle pool's spinning took the cores from the
        other's run: decompressing right after compressing took 1.5x as long, compressing right after
        decompressing 1.7-1.9x (benchmarks/README.md). On: workers spin during a run but stop when it returns.
    """

    optimization: str = "all"
    mem_arena: bool = True
    optimized_model_path: str | None = None
    shared_arena: bool = True
    stop_spinning: bool = True


DEFAULT_TUNING = Tuning()
# Input pixels of one run above which the arena is shrunk after the run: one tile of a big image with its halo
# on every side (1152 x 1152) keeps it. At 1 << 20, the tiles' halos put them over, and shrinking after every
# tile made the networks 1.65x as slow per pixel (1088 x 1152 against 1024 x 1024, measured 2026-11-25).
SHRINK_ABOVE_PIXELS = (MAX_TILE + 2 * HALO) ** 2


_ARENA_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _register_shared_cpu_arena() -> None:
    ort = import_ort()
    try:
        ort.create_and_register_allocator(
            ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT),
            ort.OrtArenaCfg(0, -1, -1, -1))  # onnxruntime's defaults, as a session's own arena has
    except Exception:  # already registered (by a host application) or not possible: nothing to add
        pass


def shared_cpu_arena() -> None:
    """Register one CPU arena with onnxruntime's process-wide environment, once, for sessions to share
    ("session.use_env_allocators", https://onnxruntime.ai/docs/get-started/with-c.html): an encoder and a decoder
    that take turns, or the qualities rate control tries, reuse the same buffers instead of each keeping its
    own (measured: 4 codecs after a 1024 x 1024 image held 547 MB against 2532, at the same speed). Where one
    was registered before (by a host application), sessions share that one; where none is, each keeps its own."""
    with _ARENA_LOCK:
        _register_shared_cpu_arena()


def run_options(tuning: Tuning, pixels: int):
    """RunOptions that return the CPU arena's memory after a large run ("memory.enable_memory_arena_shrinkage",
    https://onnxruntime.ai/docs/get-started/with-c.html), or None for runs that keep it."""
    if not tuning.mem_arena or pixels <= SHRINK_ABOVE_PIXELS:
        return None
    opts = import_ort().RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return opts


def check_threads(threads: int | None, allow_auto: bool = True) -> None:
    """Threads beyond a few per CPU only contend, and a typo like 1000000 would exhaust memory creating them:
    refuse it in one line. None is aectl's default (cores.default_threads); 0 leaves the choice to onnxruntime,
    which also pins its worker threads to cores (not where `allow_auto` is false: bench gives torch and the
    matmul peak the same count, and train sets torch's)."""
    limit = 4 * (os.cpu_count() or 1)
    if threads is not None and not is_whole_number(threads):
        raise AectlError(f"{option('threads', threads)}: give a whole number (onnxruntime takes no "
                         f"{type(threads).__name__})")
    if threads is not None and not (0 if allow_auto else 1) <= threads <= limit:
        auto = ", or 0 for onnxruntime's own choice" if allow_auto else ""
        raise AectlError(f"{option('threads', threads)}: give 1..{limit} (at most 4 per CPU here){auto}")


def session_options(threads: int | None = None, tuning: Tuning = DEFAULT_TUNING):
    check_threads(threads)
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
    if tuning.mem_arena and tuning.shared_arena:
        shared_cpu_arena()
        opts.add_session_config_entry("session.use_env_allocators", "1")
    if tuning.stop_spinning:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    if tuning.optimized_model_path:
        opts.optimized_model_filepath = tuning.optimized_model_path
    if threads is None:  # an explicit count, so that onnxruntime pins no thread (runtime/cores.py)
        threads = default_threads()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return opts


def cuda_options() -> dict:
    """CUDA provider options (https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html).

    cudnn_conv_algo_search HEURISTIC: EXHAUSTIVE (the default) benchmarks every cuDNN algorithm for each new
    input shape, hundreds of ms per image size, and image sizes vary from file to file; HEURISTIC asks cuDNN's
    heuristics once, with no benchmarking. use_tf32 0: TF32 convolutions round inputs to 10 mantissa bits,
    far outside the 1e-4 parity the bundles are checked to, and would move latents across rounding
    boundaries, so CUDA-encoded symbols would disagree with CPU-encoded ones more often."""
    return {"device_id": GPU_DEVICE_ID, "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}


def tensorrt_cache_dir() -> Path:
    """Where TensorRT engines are kept between processes: $XDG_CACHE_HOME/aectl/trt (~/.cache/aectl/trt)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aectl" / "trt"


def tensorrt_options(engine_cache: bool = True) -> dict:
    """TensorRT provider options (https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html).

    fp32 only (fp16 would break parity with the CPU decoder). Building an engine takes seconds per input
    shape, so engines and TensorRT's timing cache are stored on disk and reused by later processes; the
    cache is keyed by the model and the shape range, so a new image size can still build a new engine."""
    opts = {"device_id": GPU_DEVICE_ID, "trt_fp16_enable": False, "trt_int8_enable": False}
    if engine_cache:
        path = tensorrt_cache_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise AectlError(f"cannot create the TensorRT engine cache {path}: {exc.strerror}") from None
        opts.update({"trt_engine_cache_enable": True, "trt_engine_cache_path": str(path),
                     "trt_timing_cache_enable": True, "trt_timing_cache_path": str(path)})
    return opts


def _provider_chain(provider: str, engine_cache: bool) -> list:
    """What onnxruntime is asked for: the named provider first, then its fallbacks for unsupported nodes."""
    if provider == "tensorrt":
        return [("TensorrtExecutionProvider", tensorrt_options(engine_cache)),
                ("CUDAExecutionProvider", cuda_options()), "CPUExecutionProvider"]
    if provider == "cuda":
        return [("CUDAExecutionProvider", cuda_options()), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_NOT_USABLE = {
    "cuda": "CUDA provider is installed but not usable here (CUDA or cuDNN libraries missing, or no GPU); "
            "onnxruntime fell back to {got}. Use {cpu} or fix the CUDA setup",
    "tensorrt": "TensorRT provider is installed but not usable here (TensorRT, CUDA or cuDNN libraries missing, "
                "or no GPU); onnxruntime fell back to {got}. Use {cuda} or {cpu}, or install TensorRT",
}
_NOT_BUILT = {
    "cuda": "{asked}: this onnxruntime has no CUDA provider (available: {available}); "
            "install aectl[gpu] on a machine with a GPU",
    "tensorrt": "{asked}: this onnxruntime has no TensorRT provider (available: {available}); "
                "install aectl[gpu] and TensorRT on a machine with a GPU",
}


def create_session(model: str | bytes, provider: str = "auto", threads: int | None = None,
                   tuning: Tuning = DEFAULT_TUNING, engine_cache: bool = True):
    """An InferenceSession on exactly the asked provider (auto: CUDA if it really works, else CPU; auto never
    picks TensorRT, whose engine builds cost seconds on first use)."""
    if provider not in PROVIDER_NAMES:
        raise AectlError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDER_NAMES)}")
    ort = import_ort()
    available = ort.get_available_providers()
    opts = session_options(threads, tuning)
    wanted = "cuda" if provider == "auto" else provider
    if wanted != "cpu":
        label = "CUDA" if wanted == "cuda" else "TensorRT"
        if EXECUTION_PROVIDERS[wanted] in available:
            try:
                session = ort.InferenceSession(model, sess_options=opts,
                                               providers=_provider_chain(wanted, engine_cache))
            except AectlError:
                raise
            except Exception as exc:
                if provider != "auto":
                    raise AectlError(f"{label} provider failed to start: {exc}".splitlines()[0]) from None
            else:
                got = session.get_providers()[0]
                if got == EXECUTION_PROVIDERS[wanted]:
                    return session
                if provider != "auto":
                    raise AectlError(_NOT_USABLE[wanted].format(got=got, cpu=option("provider", "cpu"),
                                                                cuda=option("provider", "cuda")))
        elif provider != "auto":
            raise AectlError(_NOT_BUILT[wanted].format(asked=option("provider", wanted),
                                                       available=", ".join(available)))
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise AectlError(f"onnxruntime cannot load the model: {exc}".splitlines()[0]) from None


def session_device(session) -> str:
    """The OrtValue device type of a session's first provider: where its inputs and outputs live."""
    return "cpu" if session.get_providers()[0] == "CPUExecutionProvider" else "cuda"


@functools.lru_cache(maxsize=None)
def probe(name: str) -> tuple[bool, str]:
    """Whether a provider really runs a model here, by running one (not by trusting get_available_providers,
    which lists CUDA and TensorRT whenever the package was built with them). Used by doctor and the tests."""
    import numpy as np

    ort = import_ort()
    if EXECUTION_PROVIDERS[name] not in ort.get_available_providers():
        return False, "not in this onnxruntime build"
    try:
        session = create_session(_identity_model(), name, engine_cache=False)
        out = session.run(None, {"x": np.ones((1, 2), np.float32)})[0]
    except AectlError as exc:
        return False, f"fails: {exc}"
    except Exception as exc:  # a provider that starts and then fails to run
        return False, f"fails: {exc}".splitlines()[0]
    return (True, "works") if float(out.sum()) == 4.0 else (False, "wrong result")


def check_provider_name(name: str) -> None:
    """A name aectl knows, checked where a codec is made (a typo failed only at its first session)."""
    if name not in PROVIDER_NAMES:
        raise AectlError(f"unknown provider {name!r}; choose one of {', '.join(PROVIDER_NAMES)}")


_STARTED: set[str] = set()  # GPU providers that started a session in this process


def require_provider(name: str) -> None:
    """Fail where a codec is made, and once before a batch starts, when the asked provider cannot run here
    (instead of at the first image, once per file). A provider that started once is not tried again."""
    check_provider_name(name)
    if name not in ("auto", "cpu") and name not in _STARTED:
        create_session(_identity_model(), name, engine_cache=False)  # raises the provider's one-line error
        _STARTED.add(name)


def resolve(name: str) -> str:
    """The provider a session asked for `name` runs on: "auto" is CUDA where it really runs, else the CPU (as
    create_session decides), so reports name what was run."""
    check_provider_name(name)
    if name != "auto":
        return name
    return "cuda" if probe("cuda")[0] else "cpu"


def usable_providers() -> dict[str, str]:
    """For `aectl doctor`: which providers really create a working session here, by trying each."""
    return {name: probe(name)[1] for name in EXECUTION_PROVIDERS}


def _identity_model() -> bytes:
    """A one-node ONNX model (y = x + x), serialized ahead of time so doctor needs no onnx package."""
    return bytes.fromhex(
        "08081205616563746c3a3d0a0e0a01780a017812017922034164641201675a130a0178120e0a0c080112080a0208010a"
        "02080262130a0179120e0a0c080112080a0208010a02080242040a00100d")
