"""The machine's dense fp32 matmul rate, measured now, on the provider and thread count being benchmarked.

A one-node MatMul graph runs in an onnxruntime session built by the runtime's own session factory, so the
peak uses the same GEMM library (MLAS on CPU, cuBLAS on CUDA) and thread pool as the codec's convolutions.
Square products of a few sizes are timed (warm-up excluded) and the best size is the peak: a measured ceiling
for what a convolution lowered to GEMM can reach here, not a datasheet figure. Each size is timed as total
MACs over total time of a window of at least `min_seconds`, not as the median of single runs: on a machine
shared with other jobs, short runs that escape preemption would otherwise give a peak no long run can see.
"""
from __future__ import annotations

import time

import numpy as np

from aectl.runtime.providers import create_session

SIZES = (256, 512, 1024, 2048)


def matmul_model(n: int) -> bytes:
    """Y = A @ B for float32 A, B of shape (n, n), as serialized ONNX (opset 13)."""
    from aectl.perf.macs import _onnx

    _onnx()  # a clear error where the onnx package is missing, before the import below
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])], "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("B", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def matmul_peak(provider: str = "cpu", threads: int | None = None, sizes=SIZES, repeats: int = 3,
                min_seconds: float = 0.5) -> dict:
    """{"macs_per_s": best over sizes, "per_size": {n: MACs/s}, ...}; each size is repeated until it ran
    at least min_seconds (and at least `repeats` times)."""
    per_size = {}
    rng = np.random.default_rng(0)
    for n in sizes:
        session = create_session(matmul_model(n), provider, threads)
        feeds = {"A": rng.random((n, n), dtype=np.float32), "B": rng.random((n, n), dtype=np.float32)}
        session.run(None, feeds)  # warm-up
        count, start = 0, time.perf_counter()
        while count < repeats or time.perf_counter() - start < min_seconds:
            session.run(None, feeds)
            count += 1
        per_size[n] = count * n ** 3 / (time.perf_counter() - start)
    best = max(per_size, key=per_size.get)
    return {"macs_per_s": per_size[best], "best_size": best, "per_size": {str(k): v for k, v in per_size.items()},
            "provider": provider, "threads": threads, "method": "onnxruntime MatMul, fp32, square n x n, "
            f"total MACs / total time over >= {min_seconds} s per size"}


def best_of(measurements: list[dict]) -> dict:
    """One peak from several matmul_peak measurements of the same run (the bench takes one before and one after
    its timed passes): per size the fastest, since a ceiling is what the machine managed at its best. A single
    window can fall into a busy spell of a shared machine and put a network above "100% of peak"."""
    per_size = {n: max(m["per_size"][n] for m in measurements) for n in measurements[0]["per_size"]}
    best = max(per_size, key=per_size.get)
    return {**measurements[0], "macs_per_s": per_size[best], "best_size": int(best), "per_size": per_size,
            "measurements_macs_per_s": [m["macs_per_s"] for m in measurements],
            "method": measurements[0]["method"] + f", best of {len(measurements)} measurements per size "
                      "(before and after the timed passes)"}
