"""The two ONNX halves of a bundle behind numpy: encode(x) -> y and decode(y_hat) -> x, plus the
quantisation that sits between them. Shape rules are checked here because onnxruntime does not enforce
derived-dimension rules such as "a multiple of 16".

Every run goes through onnxruntime's IOBinding (https://onnxruntime.ai/docs/api/python/api_summary.html#iobinding,
https://onnxruntime.ai/docs/performance/tune-performance/iobinding.html), on the CPU as on a GPU, so the
code that serves CUDA is the code the CPU tests run. The input lives in an OrtValue on the session's device
that is kept while the shape repeats (a batch of same-size images, the full tiles of a big image) and
refilled in place: one host-to-device copy per run, no device allocation. The output is bound to the
device and stays there until the entropy coder needs it, then comes to the host in one copy."""
from __future__ import annotations

import threading

import numpy as np

from aectl.runtime.bundle import Bundle, check_stamps
from aectl.runtime.errors import AectlError
from aectl.runtime.providers import (DEFAULT_TUNING, GPU_DEVICE_ID, Tuning, check_threads, require_provider,
                                     create_session, import_ort, run_options, session_device)

INT32_LIMIT = 2**31 - 1
# Pixels per session run (a batch of same-size images, or tiles). On the CPU, batching pays only for small
# images: with the default model, runs of up to 2**16 px (eight 64x64 images, four of 128x128, two of 160x160)
# made the codec's batch calls 4-20% faster per image than one image at a time, while bigger runs made images
# of 160x160 to 256x256 7-13% slower than that budget (AVX-512 EPYC; on an AVX2 EPYC earlier, 128x128 images
# ran ~20% faster in runs of 8 than alone). Runs over providers.SHRINK_ABOVE_PIXELS would also pay 30-45%
# more per image, for re-faulting the arena they hand back (benchmarks/batch_probe.py, benchmarks/README.md).
# On a GPU, big runs fill the device; the bound there only caps memory.
CPU_RUN_PIXELS = 1 << 16
GPU_RUN_PIXELS = 1 << 22


class _Binding:
    """One session's IOBinding and the device input it refills. Not thread-safe: Network keeps one per thread
    (the edge HTTP service decodes requests on concurrent threads with one Decoder)."""

    def __init__(self, session):
        self.session = session
        self.device = session_device(session)
        self.device_id = 0 if self.device == "cpu" else GPU_DEVICE_ID
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.binding = session.io_binding()
        self.input = None  # OrtValue on self.device, reused while the input shape repeats

    def run(self, array: np.ndarray, options=None) -> np.ndarray:
        ort = import_ort()
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self.input is None or tuple(self.input.shape()) != array.shape:
            self.input = None  # free the old buffer before allocating the new one
            self.input = ort.OrtValue.ortvalue_from_shape_and_type(array.shape, np.float32, self.device,
                                                                  self.device_id)
            self.binding.bind_ortvalue_input(self.input_name, self.input)
        self.input.update_inplace(array)  # the one host-to-device copy (a memcpy on the CPU)
        # Bound afresh every run: after a run the binding holds the output it allocated and would hand that
        # same buffer to the next run, which fails when the shape changes and, on the CPU, would overwrite
        # the array returned last time (.numpy() shares the buffer there and keeps it alive; on a GPU it is
        # the one device-to-host copy).
        self.binding.bind_output(self.output_name, self.device, self.device_id)
        self.session.run_with_iobinding(self.binding, options)
        return self.binding.get_outputs()[0].numpy()


class Network:
    def __init__(self, bundle: Bundle, provider: str = "auto", threads: int | None = None,
                 tuning: Tuning = DEFAULT_TUNING):
        check_threads(threads)  # now, not at the first session: bad values fail before any work
        require_provider(provider)  # "cuda" where CUDA does not run fails here, not at the first image
        self.bundle = bundle
        self.provider = provider
        self.threads = threads
        self.tuning = tuning
        self._sessions: dict = {}
        self._starting = threading.Lock()  # one session per role, however many threads ask first
        self._local = threading.local()  # role -> _Binding, per thread
        ent = bundle.entropy
        self.step = np.float32(ent["step"])
        self.medians = np.asarray(ent["medians"], dtype=np.float32)

    def session(self, role: str):
        """Sessions are created on first use, so a decoder-only client never touches the encoder."""
        if role == "decoder":
            role = self.bundle.decoder_role
        if role not in self._sessions:
            with self._starting:  # 8 threads' first calls made 8 sessions, each kept by its thread's binding
                if role not in self._sessions:
                    session = create_session(self.bundle.read(role), self.provider, self.threads, self.tuning)
                    self._check_fits(role, session)  # the more telling, where the shapes differ too
                    check_stamps(self.bundle, self.bundle.file(role, verify=False).name,
                                 session.get_modelmeta().custom_metadata_map)
                    self._sessions[role] = session
        return self._sessions[role]

    def _check_fits(self, role: str, session) -> None:
        """The graph's input and output shapes against the manifest's. A manifest edited by hand to name the
        wrong file, or another channel count, failed inside onnxruntime or numpy, or blamed a good .aec file."""
        lat, fixed = self.bundle.latent_rule, self.bundle.input_rule["fixed_size"]
        image = ["N", 3, fixed or "H", fixed or "W"]
        latent = ["N", lat["channels"]] + (["h", "w"] if lat["layout"] == "NCHW" else [])
        expected = (image, latent) if role == "encoder" else (latent, image)
        for what, args, want in zip(("input", "output"), (session.get_inputs(), session.get_outputs()), expected):
            shape = args[0].shape if len(args) == 1 else None
            if shape is None or len(shape) != len(want) or any(
                    isinstance(d, int) and isinstance(w, int) and d != w for d, w in zip(shape, want)):
                name = self.bundle.manifest["files"][role]["path"]
                got = "x".join(str(d) if isinstance(d, int) else "?" for d in shape) if shape else \
                    f"{len(args)} tensors"
                half, verb = role.split("_")[0], "takes" if what == "input" else "gives"
                raise AectlError(f"bundle {self.bundle.path}: {name} does not fit its manifest: its {what} is {got}, "
                                 f"but the manifest's {half} {verb} {'x'.join(map(str, want))}")

    def binding(self, role: str) -> _Binding:
        """This thread's IOBinding for a role, created once and reused for every later run."""
        if role == "decoder":
            role = self.bundle.decoder_role
        bindings = self._local.__dict__.setdefault("bindings", {})
        if role not in bindings:
            bindings[role] = _Binding(self.session(role))
        return bindings[role]

    @property
    def providers(self) -> list[str]:
        return [s.get_providers()[0] for s in self._sessions.values()]

    def run_device(self, role: str) -> str:
        """'cpu' or 'cuda': where a role's session runs (creating the session if needed)."""
        return self.binding(role).device

    def run_pixels(self, role: str) -> int:
        """How many pixels one session run of `role` should hold at most (see CPU_RUN_PIXELS)."""
        return CPU_RUN_PIXELS if self.run_device(role) == "cpu" else GPU_RUN_PIXELS

    def check_input(self, x: np.ndarray) -> None:
        rule = self.bundle.input_rule
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4 or x.shape[1] != 3:
            raise AectlError(f"expected a float32 array of shape (N, 3, H, W), got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        h, w = x.shape[2:]
        if x.shape[0] < 1 or h < 1 or w < 1:
            raise AectlError(f"empty input of shape {x.shape}")
        if rule["fixed_size"] is not None:
            if (h, w) != (rule["fixed_size"],) * 2:
                raise AectlError(f"this model takes {rule['fixed_size']}x{rule['fixed_size']} inputs, got {h}x{w}")
        elif h % rule["stride"] or w % rule["stride"]:
            raise AectlError(f"height and width must be multiples of {rule['stride']}, got {h}x{w}")

    def latent_shape(self, n: int, h: int, w: int) -> tuple[int, ...]:
        lat = self.bundle.latent_rule
        if lat["layout"] == "NC":
            return (n, lat["channels"])
        stride = self.bundle.input_rule["stride"]
        return (n, lat["channels"], h // stride, w // stride)

    def encode(self, x: np.ndarray) -> np.ndarray:
        self.check_input(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        return self.binding("encoder").run(x, run_options(self.tuning, pixels))

    def decode(self, y_hat: np.ndarray) -> np.ndarray:
        lat = self.bundle.latent_rule
        ndim = 2 if lat["layout"] == "NC" else 4
        if not isinstance(y_hat, np.ndarray) or y_hat.ndim != ndim or y_hat.shape[1] != lat["channels"]:
            raise AectlError(f"expected latents of shape (N, {lat['channels']}{', h, w' if ndim == 4 else ''}), "
                             f"got {getattr(y_hat, 'shape', type(y_hat).__name__)}")
        if min(y_hat.shape) < 1:  # onnxruntime would fail inside a Conv and print its own error line
            raise AectlError(f"empty latents of shape {y_hat.shape}")
        stride = self.bundle.input_rule["stride"]
        pixels = y_hat.shape[0] * (int(np.prod(y_hat.shape[2:])) * stride * stride if ndim == 4 else 1)
        return self.binding("decoder").run(y_hat, run_options(self.tuning, pixels))

    def _channel_view(self, values: np.ndarray) -> np.ndarray:
        return self.medians.reshape(1, -1, *([1] * (values.ndim - 2)))

    def quantize(self, y: np.ndarray) -> np.ndarray:
        """Integer symbols: round(y / step - median), clipped to the int32 range the bitstream carries."""
        scaled = y / self.step - self._channel_view(y)
        return np.clip(np.rint(scaled), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        return ((symbols.astype(np.float32) + self._channel_view(symbols)) * self.step).astype(np.float32)
