"""The engines that score cells (section III's inference): nnabla, OpenCV DNN and onnxruntime behind one
:class:`Backend` interface; :func:`wbc_nnabla.predictor.load_backend` chooses and loads one.

Split from :mod:`wbc_nnabla.predictor` in 0.2.0 (its names stay importable there).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np

from .errors import InputError, PathLike
from .modelfile import ModelError

log = logging.getLogger(__name__)


def cpu_count() -> int:
    """CPU cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def nnabla_on_gpu() -> bool:
    """True when nnabla's current default context is a CUDA one.

    nnabla not imported yet means nobody set a context: CPU (and the ONNX
    backends then never import nnabla, saving its start-up).
    """
    nn = sys.modules.get("nnabla")
    if nn is None:
        return False
    return any(b.startswith(("cuda", "cudnn")) for b in nn.get_current_context().backend)


class Backend:
    """A loaded model: ``run(x)`` maps float32 ``(N, 3, S, S)`` in [0, 1] to probabilities ``(N, C)``.

    Attributes: ``name`` (backend), ``meta`` (``arch``, ``class_names``,
    ``input_size``...), ``model_path`` (the file the user gave; the ONNX
    backends also have ``onnx_path``, the converted file they run).
    """

    name = "?"
    #: ``fp32``, or ``int8`` for the quantised ONNX (:mod:`wbc_nnabla.quantize`; ``int8`` then holds its check record)
    precision = "fp32"
    int8: Optional[dict] = None
    #: images per call to the engine; larger batches are split (measured faster
    #: on CPU: activations of small chunks stay in cache).
    chunk = 0

    def __init__(self, model_path: PathLike, meta: dict):
        self.model_path = Path(model_path)
        self.meta = meta

    @property
    def class_names(self) -> List[str]:
        return self.meta.class_names

    def run(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` of ``x``; a NaN or infinite one is a :class:`ModelError` naming the model."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise InputError(f"expected a float32 batch (N, 3, S, S), got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = self.chunk or len(x)
        probs = np.concatenate([self._run(x[i:i + step]) for i in range(0, len(x), step)])
        if not np.isfinite(probs).all():    # NaN would be written as empty and read as the first class
            raise ModelError(f"{self.model_path}: gives non-finite probabilities (NaN or infinite) for "
                             f"{int((~np.isfinite(probs)).any(axis=1).sum())} of {len(x)} cells of a batch: its "
                             f"weights overflow on these cells; no prediction is written")
        return probs

    def _run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.meta.get('arch')} {self.model_path.name}>"


class NnablaBackend(Backend):
    """The reference: the nnabla graph of models.py, in test mode, with softmax.

    One graph per input shape, built in a private parameter scope (never the
    global one, so training code in the same process is not disturbed).
    """

    name = "nnabla"

    def __init__(self, model_path: PathLike, params: dict, meta: dict):
        from . import models
        super().__init__(model_path, meta)
        self.params = params
        self._scope = models.private_scope(params)
        self._graphs: Dict[tuple, tuple] = {}

    def _graph(self, shape: tuple):
        if shape not in self._graphs:
            import nnabla as nn

            from . import models
            with nn.parameter_scope("", self._scope):
                x = nn.Variable(shape)
                y = models.inference_network(x, self.meta)
            self._graphs = {shape: (x, y)}  # keep one: each holds the activations of a batch
        return self._graphs[shape]

    def _run(self, x: np.ndarray) -> np.ndarray:
        xv, yv = self._graph(x.shape)
        xv.d = x
        yv.forward(clear_buffer=True)
        return yv.d.copy()


class OnnxBackend(Backend):
    """A backend running the ONNX export (``onnx_path``) of the model file the user gave (``model_path``)."""

    chunk = 1

    def __init__(self, onnx_path: PathLike, meta: dict, model_path: Optional[PathLike] = None):
        super().__init__(model_path or onnx_path, meta)
        self.onnx_path = Path(onnx_path)


class OpenCVBackend(OnnxBackend):
    """The ONNX export run by OpenCV's DNN module (``cv2.dnn.readNetFromONNX``)."""

    name = "opencv"

    def __init__(self, onnx_path: PathLike, meta: dict, threads: Optional[int] = None,
                 model_path: Optional[PathLike] = None):
        super().__init__(onnx_path, meta, model_path)
        cv2.setNumThreads(threads or cpu_count())
        self.net = cv2.dnn.readNetFromONNX(str(onnx_path))
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

    def _run(self, x: np.ndarray) -> np.ndarray:
        self.net.setInput(x)
        return np.array(self.net.forward(), dtype=np.float32, copy=True)


class OnnxRuntimeBackend(OnnxBackend):
    """The ONNX export run by onnxruntime's CPU execution provider."""

    name = "onnxruntime"

    def __init__(self, onnx_path: PathLike, meta: dict, threads: Optional[int] = None,
                 model_path: Optional[PathLike] = None):
        import onnxruntime as ort
        super().__init__(onnx_path, meta, model_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or cpu_count()
        so.inter_op_num_threads = 1
        # EXTENDED, not ALL: ALL adds the NCHWc layout rewrite, measured slower
        # for this network here (docs/research/benchmarks_log.md).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        # idle worker threads sleep instead of spinning: on a shared CPU spinning
        # burned ~20% more CPU per image for no gain (docs/research/benchmarks_log.md)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["y"], {"x": x})[0]


def available_backends() -> List[str]:
    """Backends whose libraries import in this environment."""
    out = ["nnabla", "opencv"]
    try:
        import onnxruntime  # noqa: F401
        out.append("onnxruntime")
    except ImportError:
        pass
    return out
