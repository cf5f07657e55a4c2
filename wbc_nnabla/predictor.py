"""Predictions for cell images: the inference stage of Sasaki et al. (2020), section II.3/III.

``predict(model, cells)`` runs a trained ResNet over single-cell crops and
returns a predictions table (one row per cell)::

    path, smear, label, pred6, pred5, prob_Basophil, prob_Eosinophil, prob_Lymph,
    prob_Mono, prob_Band, prob_Segment

(a model of another class set gives ``pred`` and ``prob_<name>`` columns; the
scoring stage only accepts the six-class schema). The table's schema, writer
and validated reader are :mod:`wbc_nnabla.predictions`. See ``docs/inference.md``.

Every backend gets the same input from one function, :func:`preprocess`
(resize to ``size`` x ``size``, RGB scaled to [0, 1], ``(3, S, S)``), so only
the network arithmetic differs between them:

* ``nnabla``: the reference, the graph of :mod:`wbc_nnabla.models` (GPU when a
  CUDA context is current; single-threaded on CPU);
* ``opencv``: the ONNX export run by ``cv2.dnn`` (multi-threaded, Winograd 3x3);
* ``onnxruntime``: the ONNX export run by onnxruntime.

``auto`` picks nnabla on a GPU context, else the fastest CPU backend installed.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pandas as pd

from . import fileio, outputs, quantize
# the engines, public here since 0.1.0 (predictor.Backend, predictor.available_backends, ...)
from .backends import (Backend, NnablaBackend, OnnxBackend, OnnxRuntimeBackend, OpenCVBackend,  # noqa: F401
                       available_backends, cpu_count, nnabla_on_gpu)
from .errors import InputError, PathLike
from .export import cached_onnx, read_onnx_meta
from .modelfile import MODEL_SUFFIXES, ONNX_SUFFIX, ModelError, network_size, read_model
from .predictions import (CALIBRATION_KEY, PRIOR_COLLAPSED, PRIOR_ESTIMATE, apply_prior, apply_smear_priors,
                          parse_prior, predictions_table, prior_weights)
from .recipe import BACKEND_NAMES
from .sites import seams

log = logging.getLogger(__name__)

BACKENDS = BACKEND_NAMES
#: CPU backends fastest first at fp32 (docs/benchmarks.md); ``auto`` follows the measured order of
#: :data:`wbc_nnabla.quantize.CHOICE_FILE` (int8 included), this one when that file is absent.
CPU_ORDER = tuple(b for b, _ in quantize.FP32_ORDER)
#: Most CPU threads ``threads`` may ask of OpenCV or onnxruntime: beyond the cores, threads only
#: cost memory (OpenCV allocates per thread; a billion was a bad_alloc deep inside it).
MAX_THREADS = 1024


# ----------------------------------------------------------------------------- preprocessing


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """Network input of one cell image: float32 ``(3, size, size)`` RGB in [0, 1].

    rgb: uint8 ``(H, W, 3)`` RGB (as :func:`wbc_nnabla.fileio.read_rgb` returns).

    The image is resized to ``size`` x ``size`` (the paper resizes its 750x750
    crops to 480 for training and 320 for inference, section II.3) with
    ``cv2.INTER_AREA`` when shrinking (both sides larger than ``size``; no
    aliasing), else ``cv2.INTER_LINEAR``; then scaled by 1/255 like nnabla's
    ``data_iterator_csv_dataset(normalize=True)``. ImageNet normalisation is
    inside the network. Every backend uses this function.
    """
    rgb = fileio.resize_square(fileio.check_rgb(rgb), size)  # the same rule as training's loader
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)


def load_input(path: PathLike, size: int, transform: Optional[Callable] = None) -> np.ndarray:
    """:func:`preprocess` of the image file ``path`` (raises ``ImageReadError`` naming it).

    transform: applied to the uint8 ``(H, W, 3)`` RGB image first (e.g. :func:`wbc_nnabla.sites.stain.standardiser`).
    """
    rgb = fileio.read_rgb(path)
    return preprocess(transform(rgb) if transform is not None else rgb, size)


def _model_kind(path: Path) -> str:
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (expected .nnp, .h5 or an exported .onnx)")
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES + (ONNX_SUFFIX,):
        raise ModelError(f"{path}: unsupported model file type {suffix!r} (expected .nnp, .h5 or .onnx)")
    return suffix[1:]


def load_backend(model: PathLike, backend: str = "auto", threads: Optional[int] = None, precision: str = "auto",
                 size: Optional[int] = None, calibration: Optional[PathLike] = None, cells=None) -> Backend:
    """Load a model file for one backend and precision.

    model: ``.nnp`` / ``.h5`` (any backend; the ONNX is exported on the fly and
        cached, see :func:`wbc_nnabla.export.cached_onnx`) or an ONNX exported by
        wbc_nnabla (``opencv``/``onnxruntime`` only).
    backend, precision: :data:`BACKENDS`, ``fp32``/``int8``/``auto``; ``auto``/``auto`` = nnabla on a GPU
        context, else the measured order (:func:`wbc_nnabla.quantize.candidates`). ``int8`` (onnxruntime):
        the export quantised on calibration cells and checked (:func:`wbc_nnabla.quantize.int8_onnx`).
    threads: CPU threads for opencv/onnxruntime (default: all cores of this process).
    size: the px int8 is calibrated at (default the model's); calibration: labelled cells to calibrate
        on (default the model's own); cells: the cells to score, never calibrated on (anything
        :func:`read_inputs` accepts; ``auto`` then falls back to fp32).
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise InputError(f"threads must be in [1, {MAX_THREADS}] (default: every core), got {threads}")
    path = Path(model)
    kind = _model_kind(path)
    pairs = quantize.candidates(backend, precision, kind == "onnx", nnabla_on_gpu(), available_backends())
    for i, (name, prec) in enumerate(pairs):
        if prec == "fp32":
            return _fp32_backend(path, kind, name, threads)
        try:
            return _int8_backend(path, kind, threads, size, calibration, cells)
        except quantize.QuantizeError as e:
            if precision == "int8" or i == len(pairs) - 1:
                raise
            say = log.info if isinstance(e, quantize.NoCalibrationCells) else log.warning
            say("auto: int8 not used (%s); %s %s instead", e, *pairs[i + 1])
    raise ModelError(f"{path}: no backend to load it")  # candidates() never returns an empty list


def _fp32_backend(path: Path, kind: str, backend: str, threads: Optional[int]) -> Backend:
    """The fp32 backend ``backend`` of the model file ``path`` (of ``kind`` nnp/h5/onnx)."""
    if backend not in available_backends():
        raise ModelError(f"backend {backend!r} is not installed (pip install 'wbc_nnabla[{backend}]')")
    if kind == "onnx":
        if backend == "nnabla":
            raise ModelError(f"{path}: the nnabla backend needs the .nnp or .h5 model, not an ONNX file")
        onnx_path, meta = path, read_onnx_meta(path)
    elif backend == "nnabla":
        params, meta = read_model(path)
        return NnablaBackend(path, params, meta)
    else:
        # a cache miss exports (read_model validates the network); a hit was
        # validated when exported, and skips importing nnabla altogether
        onnx_path = cached_onnx(path)
        meta = read_onnx_meta(onnx_path)
    cls = OpenCVBackend if backend == "opencv" else OnnxRuntimeBackend
    try:
        return cls(onnx_path, meta, threads, model_path=path)
    except cv2.error as e:
        raise ModelError(f"{onnx_path}: OpenCV cannot load this ONNX ({str(e).strip().splitlines()[-1]})") from None


def _int8_backend(path: Path, kind: str, threads: Optional[int], size: Optional[int], calibration, cells) -> Backend:
    """onnxruntime on the int8 model of ``path`` (:func:`wbc_nnabla.quantize.load_int8`; ``engine.int8``: its check)."""
    fp32 = path if kind == "onnx" else cached_onnx(path)
    meta = read_onnx_meta(fp32)
    size, transform = network_size(meta, size, path), cell_view(meta)
    scored = None if cells is None else list(read_inputs(cells)["path"])
    return quantize.load_int8(path, fp32, meta, size, calibration, scored,
                              lambda p: OnnxRuntimeBackend(p, meta, threads, model_path=path),
                              lambda p: load_input(p, size, transform))


# ----------------------------------------------------------------------------- cell inputs


def read_inputs(source, dedupe: bool = False) -> pd.DataFrame:
    """The cells to predict: a cell table (see :mod:`wbc_nnabla.fileio`), labels optional.

    source: a cell table DataFrame (needs ``path``), or any cell source
        :func:`wbc_nnabla.fileio.read_cell_images` reads (class-folder tree, ``path,label[,smear]``
        CSV, NNC dataset CSV or folder, an inference dataset folder, a folder of
        images, or a folder of smear sub-folders: the paper's inference set is 57
        smears).
    dedupe: drop exact repeats; without it a cell listed twice is an error.
    """
    if isinstance(source, pd.DataFrame):
        if "path" not in source.columns:
            raise fileio.SourceError("cell table has no 'path' column")
        df = source.copy()
        for col in ("label", "smear"):
            df[col] = df[col].fillna("").astype(str) if col in df.columns else ""
        return fileio.check_whole_images(df, "cell table")
    return fileio.read_cell_images(source, dedupe=dedupe, dedupe_flag=None)


def _load_or_skip(path: str, size: int, skip_bad: bool,
                  transform: Optional[Callable] = None) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(network input, None), or with ``skip_bad`` (None, reason) for an unreadable image."""
    try:
        return load_input(path, size, transform), None
    except fileio.ImageReadError as e:
        if not skip_bad:
            raise
        return None, str(e)


def _prefetch(paths: Sequence[str], size: int, batch_size: int, workers: int,
              skip_bad: bool = False, transform: Optional[Callable] = None
              ) -> Iterator[List[Tuple[Optional[np.ndarray], Optional[str]]]]:
    """Batches of ``(input (3, size, size) or None, reason or None)`` decoded by a thread pool, two batches ahead.

    cv2 decoding/resizing releases the GIL, so this overlaps with inference;
    the bounded look-ahead keeps memory at a few batches whatever the cell count.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque = collections.deque()
        it = iter(paths)

        def fill():
            while len(pending) < 2 * batch_size:
                p = next(it, None)
                if p is None:
                    return
                pending.append(pool.submit(_load_or_skip, p, size, skip_bad, transform))

        fill()
        while pending:
            n = min(batch_size, len(pending))
            batch = [pending.popleft().result() for _ in range(n)]
            fill()
            yield batch


#: ``predict --tta``: the eight views of a square cell image (0-3 quarter turns, each also
#: mirrored), the rotations and flips the paper balances its datasets with (section II.3).
TTA_VIEWS: Tuple[Tuple[int, bool], ...] = tuple((k, mirror) for mirror in (False, True) for k in range(4))


def dihedral_view(x: np.ndarray, quarter_turns: int, mirror: bool) -> np.ndarray:
    """A batch ``(N, C, S, S)`` turned by ``quarter_turns`` x 90 degrees, then mirrored left-right if ``mirror``."""
    y = np.rot90(x, quarter_turns, axes=(2, 3))
    return np.ascontiguousarray(y[..., ::-1] if mirror else y)


def run_views(engine: Backend, x: np.ndarray) -> np.ndarray:
    """Test-time augmentation: the mean ``(N, C)`` of the probabilities over :data:`TTA_VIEWS`."""
    return np.mean([engine.run(dihedral_view(x, k, m)) for k, m in TTA_VIEWS], axis=0)


def _run_all(engine: Backend, paths: Sequence[str], size: int, batch_size: int, skip_bad: bool,
             progress: bool, transform: Optional[Callable] = None, tta: bool = False,
             observe: Optional[Callable[[np.ndarray], None]] = None) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(probabilities of the readable cells, mask of readable cells, reasons of the skipped ones);
    ``tta``: averaged over :data:`TTA_VIEWS`; ``observe``: called with each batch of network inputs."""
    from tqdm.auto import tqdm
    chunks, keep, skipped = [], [], []
    with tqdm(total=len(paths), unit="cell", desc=f"predict [{engine.name}]",
              disable=outputs.bar_disabled(progress)) as bar:
        for batch in _prefetch(list(paths), size, batch_size, min(4, cpu_count() + 1), skip_bad, transform):
            good = [x for x, why in batch if why is None]
            keep.extend(why is None for _, why in batch)
            skipped.extend(why for _, why in batch if why is not None)
            if good:
                x = np.stack(good)
                chunks.append(run_views(engine, x) if tta else engine.run(x))
                if observe is not None:
                    observe(x)
            bar.update(len(batch))
    probs = np.concatenate(chunks) if chunks else np.zeros((0, len(engine.class_names)), np.float32)
    return probs, np.array(keep, dtype=bool), skipped


# ----------------------------------------------------------------------------- predict


def check_classes(class_names: Sequence[str], expected: Optional[Sequence[str]], where: str) -> None:
    """Refuse a model whose class names differ (as a set) from ``expected`` (None: no check)."""
    if expected is None:
        return
    if sorted(class_names) != sorted(expected):
        raise ModelError(f"{where}: model classes {', '.join(class_names)} differ from the expected "
                         f"{', '.join(expected)}; predictions of one class set cannot fill another's schema")


@dataclasses.dataclass
class PredictRun:
    """What one predict run was (the run JSON beside the predictions CSV, :func:`run_config`).

    backend, size (px), train_size (px; None when the model stores none), batch_size, seconds, arch,
    norm (``batch``/``group``/``ibn``), skipped (reasons of the images left out), stain, zoom (the site
    view ``adapt`` stored), prior (``none``, the shares, or ``estimate``), tta, calibration (the model's
    validation cells, for ``score --pending-threshold model``), prior_estimated (``--prior estimate``:
    per smear, the shares, cells and iterations), domain (the domain-shift check's summary), precision
    (``fp32``/``int8``), int8 (the int8 model's accuracy check, :func:`wbc_nnabla.quantize.summary`; None for fp32).
    """
    backend: str
    size: int
    train_size: Optional[int]
    batch_size: int
    seconds: float
    arch: str
    norm: str
    skipped: List[str]
    stain: str
    zoom: float
    prior: object
    tta: bool
    calibration: Optional[dict]
    prior_estimated: Optional[dict] = None
    domain: Optional[dict] = None
    precision: str = "fp32"
    int8: Optional[dict] = None

    def to_dict(self) -> dict:
        """The record as the run JSON holds it (``calibration`` under its key; ``prior_estimated`` only when set)."""
        out = dataclasses.asdict(self)
        out[CALIBRATION_KEY] = out.pop("calibration")
        if out["prior_estimated"] is None:
            del out["prior_estimated"]
        if out["domain"] is None:
            del out["domain"]
        return out


Prediction = collections.namedtuple("Prediction", "table run")
Prediction.__doc__ = """What :func:`predict_run` returns: ``table`` (the predictions table) and ``run`` (:class:`PredictRun`)."""


def predict(model, cells, size: Optional[int] = None, batch_size: int = 16, backend: str = "auto",
            expected_classes: Optional[Sequence[str]] = None, threads: Optional[int] = None,
            progress: bool = True, skip_bad: bool = False, stain: str = "none",
            stain_reference: Optional[dict] = None, prior=None, tta: bool = False, precision: str = "auto",
            calibration: Optional[PathLike] = None) -> pd.DataFrame:
    """Predict every cell (section III's inference, 150-200 cells per smear).

    model: a model file (``.nnp``, ``.h5`` or exported ``.onnx``) or a loaded
        :class:`Backend` (reuse it across calls).
    cells: anything :func:`read_inputs` accepts (labels optional).
    size: input side in pixels; default the model's training size
        (``meta['input_size']``). The paper infers at 320 with a model trained
        at 480 (pass ``size=320`` for that); a differing size is logged as a warning.
        Required for a model file that stores no size (a bare ``.h5``).
    batch_size: images per batch.
    backend: see :func:`load_backend`.
    expected_classes: class names the caller expects (e.g. :data:`wbc_nnabla.classes.CLASSES6`);
        a model of another class set raises :class:`~wbc_nnabla.modelfile.ModelError`.
    skip_bad: leave out bad images (missing, corrupt, smaller than
        :data:`wbc_nnabla.fileio.MIN_IMAGE_SIDE`, without a bright background) instead of
        stopping; they are listed in ``df.attrs["skipped"]``. When every image is bad,
        :class:`~wbc_nnabla.images.ImageReadError` ("no readable cells").
    stain: colour standardisation of each cell before it is resized (:data:`wbc_nnabla.sites.settings.STAIN_METHODS`;
        default ``none``), towards ``stain_reference`` (:func:`wbc_nnabla.sites.stain.reference` of the
        model's training cells).
    prior: correct the probabilities from the training classes' balance to a smear's expected
        differential (:func:`wbc_nnabla.predictions.parse_prior`: ``"normal"`` for a healthy
        adult's, ``"Class=share,..."`` or a dict; None/``"none"``: off). Trades rare-class
        sensitivity for accuracy on typical smears: docs/inference.md. ``"estimate"``: each
        smear's own prior, estimated from its cells without labels
        (:func:`wbc_nnabla.predictions.apply_smear_priors`; at least 50 cells per smear).
    tta: test-time augmentation, the mean probability over the eight turned and mirrored views of
        each cell (:data:`TTA_VIEWS`); eight times the inference time. Off by default.
    precision, calibration: :func:`load_backend`'s; int8 never scores its calibration cells (refused).
    Returns the predictions table (:func:`wbc_nnabla.predictions.predictions_table`) with the run's
    record (:class:`PredictRun`, :meth:`PredictRun.to_dict`) in ``df.attrs``; :func:`predict_run` returns
    the two apart, typed.
    """
    table, run = predict_run(model, cells, size, batch_size, backend, expected_classes, threads, progress, skip_bad,
                             stain, stain_reference, prior, tta, precision, calibration)
    table.attrs.update(run.to_dict())
    return table


def predict_run(model, cells, size: Optional[int] = None, batch_size: int = 16, backend: str = "auto",
                expected_classes: Optional[Sequence[str]] = None, threads: Optional[int] = None,
                progress: bool = True, skip_bad: bool = False, stain: str = "none",
                stain_reference: Optional[dict] = None, prior=None, tta: bool = False, precision: str = "auto",
                calibration: Optional[PathLike] = None) -> Prediction:
    """:func:`predict`, returning the predictions table and its :class:`PredictRun` apart (section III)."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    table = read_inputs(cells)            # bad cell lists fail before any model conversion
    estimate = prior == PRIOR_ESTIMATE
    shares = None if estimate else parse_prior(prior)
    engine = model if isinstance(model, Backend) else load_backend(model, backend, threads, precision, size,
                                                                   calibration, cells=table)
    if engine.int8:
        quantize.check_disjoint(engine.int8["calibration"], list(table["path"]), str(engine.model_path))
    check_classes(engine.class_names, expected_classes, str(engine.model_path))
    hooks = seams.prediction_hooks(engine.meta, str(engine.model_path), stain, stain_reference)
    size, train_size = _input_size(engine, size)
    log.info("predicting %d cells at %dx%d with backend %s (%s)", len(table), size, size, engine.name,
             engine.meta.arch)
    t0 = time.perf_counter()
    probs, keep, skipped = _run_all(engine, table["path"], size, batch_size, skip_bad, progress, hooks.view, tta,
                                    hooks.observe)
    if len(table) and not keep.any():       # --skip-bad skipped them all: no cell to predict, nothing to write
        raise fileio.ImageReadError(f"{cells if isinstance(cells, (str, os.PathLike)) else 'cells'}: no readable "
                                    f"cells: all {len(table)} are bad images (first: {skipped[0]})")
    cells_kept = table[keep].reset_index(drop=True)
    probs, estimated = _with_prior(probs, cells_kept["smear"], engine.class_names, shares, estimate)
    out = predictions_table(cells_kept, probs, engine.class_names)
    run = PredictRun(engine.name, size, train_size, batch_size, time.perf_counter() - t0, engine.meta.arch,
                     engine.meta.norm, skipped, stain, float(engine.meta.get("zoom", 1.0)),
                     PRIOR_ESTIMATE if estimate else (shares or "none"), bool(tta), engine.meta.calibration,
                     estimated, precision=engine.precision,
                     int8=quantize.summary(engine.int8))
    out, run.domain = hooks.finish(out)
    return Prediction(out, run)


def _with_prior(probs: np.ndarray, smears: pd.Series, class_names: Sequence[str], shares, estimate: bool
                ) -> Tuple[np.ndarray, Optional[dict]]:
    """(probabilities ``(N, C)`` corrected to the prior, the per-smear estimates of ``--prior estimate`` or None)."""
    if shares:
        return apply_prior(probs, prior_weights(class_names, shares)), None
    if not estimate:
        return probs, None
    probs, estimated = apply_smear_priors(probs, smears, class_names)
    for smear, est in estimated.items():
        if est["collapsed"]:
            log.warning("--prior estimate: smear %s: the estimated share of %s is below %g, so its cells "
                        "will hardly ever be called that; the model's probabilities may be miscalibrated "
                        "on these cells (docs/inference.md)", smear, ", ".join(est["collapsed"]), PRIOR_COLLAPSED)
    return probs, estimated


def cell_view(meta: dict) -> Optional[Callable]:
    """How the model described by ``meta`` sees a cell image: the view ``adapt`` stored in it (re-framing
    to the training scale, colour standardisation), uint8 ``(H, W, 3)`` RGB in and out; None for a model
    that stores none. What :func:`predict` applies before :func:`preprocess` (Grad-CAM shows the same)."""
    return seams.cell_transform(meta)


def _input_size(engine: Backend, size: Optional[int]) -> Tuple[int, Optional[int]]:
    """(inference size, training size or None): a model that stores no size needs ``size``."""
    train_size = engine.meta.input_size
    size = network_size(engine.meta, size, engine.model_path)
    if train_size and size != train_size:
        log.warning("inferring at %d px with a model trained at %d px: cells look %.2fx their training "
                    "size (the paper does 480 -> 320 this way)", size, train_size, size / train_size)
    return size, train_size


def run_config(result, model: PathLike, cells, batch_size: Optional[int] = None) -> dict:
    """The effective configuration of a predict run (saved beside the CSV by the CLI): the run's record
    (a :class:`Prediction`, or a table :func:`predict` returned, whose ``attrs`` hold it) plus the model,
    the cells and the machine. ``batch_size``: default the one the run recorded."""
    table, attrs = (result.table, result.run.to_dict()) if isinstance(result, Prediction) else (result, dict(result.attrs))
    attrs["batch_size"] = attrs.get("batch_size") if batch_size is None else batch_size
    return dict(stage="predict", model=str(model), cells=str(cells), n_cells=len(table),
                environment=outputs.environment(), **attrs)


__all__ = ["BACKENDS", "Backend", "ModelError", "NnablaBackend", "OnnxRuntimeBackend", "OpenCVBackend",
           "TTA_VIEWS", "PredictRun", "Prediction", "available_backends", "cell_view", "check_classes",
           "dihedral_view", "load_backend", "predict", "predict_run", "preprocess", "read_inputs", "run_views"]
