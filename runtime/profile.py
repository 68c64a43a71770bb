"""Opt-in wall-clock accounting of where a Codec spends its time, for `aectl bench`.

A codec carries `stages = None` by default and then times nothing. Set `codec.stages = Stages()` and every
compress/decompress call adds its seconds under one of: "io" (image decoding, mode conversion, padding and
cutting into network inputs, pasting outputs back), "network" (onnxruntime or torch runs), "quantize"
(rounding latents to symbols and back), "entropy" (range or ANS coding) and "container" (header, alpha plane,
parsing). The split follows the stages of the pipeline as written in codec.py, so nothing is estimated.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

STAGES = ("io", "network", "quantize", "entropy", "container")


class Stages:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def reset(self) -> None:
        self.seconds.clear()

    def snapshot(self) -> dict[str, float]:
        return {name: float(self.seconds.get(name, 0.0)) for name in STAGES}


_OFF = contextlib.nullcontext()


def stage(stages: Stages | None, name: str):
    """`with stage(codec.stages, "network"):` costs one attribute test when profiling is off."""
    return _OFF if stages is None else stages(name)
