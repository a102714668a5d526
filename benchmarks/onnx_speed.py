"""ONNX Runtime speed of several models on the same tiles, timed in turn in one process.

Shared by the benchmarks that compare a deployed student with its teacher or its int8 twin
(``onnx_teacher.py``, ``quantization.py``, ``sen1floods11_frozen_teacher.py --speed``): every
model gets the same session options and is timed in rounds, one model after the other within each
round, so the load of a shared machine falls on all of them alike and the ratios between models
are the figures to read.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def session(path: Path, threads: int = 1) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads and one inter-op thread, quiet."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_size(path: Path) -> dict[str, Any]:
    """Floating-point weights stored in an ONNX file (initializers; integer ones such as shapes
    and indices are not counted), their data types and the file's size in bytes."""
    model = onnx.load(str(path))
    counts: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES:
            name = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
            counts[name] = counts.get(name, 0) + int(np.prod(tensor.dims))
    return {
        "parameters": sum(counts.values()),
        "dtypes": ", ".join(sorted(counts)),
        "bytes": path.stat().st_size,
    }


def interleaved_throughput(
    models: dict[str, tuple[ort.InferenceSession, np.ndarray]],
    repeats: int = 3,
    passes: int = 1,
    batch: int = 1,
) -> dict[str, Any]:
    """Megapixels per second of each model over its tiles ``(n, C, H, W)``.

    Each model runs once untimed (warm-up), then ``repeats`` rounds time every model in turn
    (``passes`` passes over its tiles, ``batch`` tiles per call); preparing the inputs is not
    timed. Models may take different inputs (a teacher its normalised bands, an exported student
    its raw bands) but must cover the same pixels.
    """
    sizes = {
        name: int(np.prod(tiles.shape[:1] + tiles.shape[2:])) for name, (_, tiles) in models.items()
    }
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the models' tiles cover different pixel counts: {sizes}")
    feeds = {
        name: [
            {s.get_inputs()[0].name: np.ascontiguousarray(tiles[i : i + batch])}
            for i in range(0, len(tiles), batch)
        ]
        for name, (s, tiles) in models.items()
    }
    for name, (s, _) in models.items():
        s.run(None, feeds[name][0])
    seconds: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, (s, _) in models.items():
            wall, clock = time.perf_counter(), time.process_time()
            for _ in range(passes):
                for feed in feeds[name]:
                    s.run(None, feed)
            seconds[name].append(time.perf_counter() - wall)
            cpu[name].append(time.process_time() - clock)
    megapixels = next(iter(sizes.values())) * passes / 1e6
    return {
        "megapixels_per_round": megapixels,
        "passes": passes,
        "batch": batch,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "mp_per_s_best": {n: megapixels / min(s) for n, s in seconds.items()},
        "mp_per_s_median": {n: megapixels / statistics.median(s) for n, s in seconds.items()},
    }
