"""int8 scoring: the ONNX export quantised statically, its accuracy checked once, cached.

Not in the paper (Sasaki et al. 2020 score with the fp32 network, section II.3/III): a speed-up of
the CPU inference stage, refused for any model it would make less accurate than
:data:`MAX_ACCURACY_DROP` on its calibration cells (docs/inference.md, "int8"; docs/method.md,
deviations).

How an int8 model is made (:func:`int8_onnx`):

1. the fp32 ONNX of the model (:func:`wbc_nnabla.export.cached_onnx`) is prepared by onnxruntime's
   ``quant_pre_process`` (shape inference, graph optimisation) and quantised by its
   ``quantize_static`` (QDQ format, uint8 activations, int8 symmetric weights, MinMax ranges) from
   the activations of the **calibration cells**, read by a ``CalibrationDataReader``;
2. both weight granularities are made, per tensor and per channel; of those keeping the accuracy rule
   on the calibration cells, the one closer to fp32 is kept (:func:`choose`);
3. the accuracy rule (:func:`accuracy_rule`): int8 accuracy on the calibration cells at most
   :data:`MAX_ACCURACY_DROP` below fp32's, else the model is refused with both figures;
4. the file and its check (JSON beside it) are cached beside the fp32 export, named by the model's
   SHA-256, the calibration cells' contents and labels, the input size and the quantiser's settings:
   another model, other cells or another size make a new file; a refusal is cached too, so the check
   runs once.

The calibration cells (:class:`CalibrationCells`) are the model's own, its training run's
validation cells (:func:`own_calibration_cells`: ``config.json`` beside the model names the dataset;
its ``valid.csv`` must list the labels the model recorded at export,
:data:`wbc_nnabla.predictions.CALIBRATION_KEY`), or labelled cells the caller gives
(:func:`given_calibration_cells`). They are never the cells being scored: :func:`check_disjoint`
compares resolved paths and file contents (SHA-256), of the images and of the source files a
``build-dataset`` manifest says they were cut from.

``auto`` (:func:`candidates`) follows :data:`CHOICE_FILE`, the order of the backend/precision pairs
by their speed measured on whole ``predict`` runs (``benchmarks/bench_inference.py --write-choice``);
int8 is in it only if the accuracy rule held on every benchmark set.

This module runs no network itself: the caller (:mod:`wbc_nnabla.predictor`) gives it a ``runner``
(ONNX file -> function of a float32 batch ``(N, 3, S, S)`` to probabilities ``(N, C)``) and
``batches`` (image paths -> their network inputs, batch by batch), so every pixel goes through the
same preprocessing as in ``predict``.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import classes, fileio, outputs
from .errors import InputError, PathLike
from .modelfile import ModelError
from .predictions import CALIBRATION_KEY, PredictionsError, read_calibration
from .recipe import PRECISION_NAMES

log = logging.getLogger(__name__)
Runner = Callable[[Path], Callable[[np.ndarray], np.ndarray]]
Batches = Callable[[Sequence[str]], Iterable[np.ndarray]]
#: What :func:`load_int8` is given: an engine of an ONNX file (a :class:`wbc_nnabla.predictor.Backend`),
#: and the network input ``(3, S, S)`` float32 of an image path (:func:`wbc_nnabla.predictor.load_input`).
EngineOf = Callable[[Path], object]
InputOf = Callable[[str], np.ndarray]

PRECISIONS = PRECISION_NAMES
#: Most the int8 accuracy on the calibration cells may fall below fp32's (issue 48's rule).
MAX_ACCURACY_DROP = 0.005
#: What to install for int8 (onnxruntime and its quantisation tools).
INSTALL_HINT = "pip install -e '.[onnxruntime]'"
#: Calibration cells per call of the network. (onnxruntime 1.23's MinMax calibrator keeps only each
#: batch's per-tensor min and max, so memory does not grow with the cells; its
#: ``CalibMaxIntermediateOutputs`` must not be set: it drops the batches collected so far, microsoft/onnxruntime#18893.)
CALIBRATION_BATCH = 8
#: Operators left in fp32: the classifier (Gemm) and the softmax, whose probabilities in uint8 would
#: be steps of ~1/255 (ties for a hesitant model, every cut-off coarser); the normalisation arithmetic
#: of a GroupNorm/IBN-a network (Sub, Div, Sqrt). Their cost is negligible beside the convolutions.
FP32_OPS = ("Gemm", "Softmax", "Sub", "Div", "Sqrt")
#: The quantiser's settings; part of the cache key (onnxruntime's version is added).
QUANTISER = dict(format="QDQ", activations="QUInt8", weights="QInt8", calibrate_method="MinMax",
                 fp32_ops=list(FP32_OPS), version=3)
#: Max |p_fp32 - p_recorded| accepted before the model's own cells are said not to match its record.
RECORD_TOLERANCE = 1e-3
#: int8 files kept in a cache folder (the oldest beyond this are removed, with their checks).
CACHE_KEEP = 16
#: The measured order ``auto`` follows (written by ``benchmarks/bench_inference.py --write-choice``).
CHOICE_FILE = Path(__file__).resolve().parent / "data" / "auto_choice.json"
#: ``auto``'s order when :data:`CHOICE_FILE` is absent: fp32 only, fastest first as measured before int8.
FP32_ORDER = (("opencv", "fp32"), ("onnxruntime", "fp32"), ("nnabla", "fp32"))
_INT8_NAME = re.compile(r".+-int8-[0-9a-f]{16}\.(onnx|json)")


class QuantizeError(ModelError):
    """int8 cannot be made or used for this model and these cells (the message says why and what to do)."""


class NoCalibrationCells(QuantizeError):
    """The model's own calibration cells cannot be found (and none were given)."""


class CalibrationOverlap(QuantizeError):
    """Cells to be scored are among the calibration cells of the int8 model."""


class Int8Refused(QuantizeError):
    """The int8 model is less accurate than fp32 on its calibration cells by more than the rule allows."""


def require_quantiser():
    """``onnxruntime.quantization``, or a :class:`QuantizeError` naming the extra to install."""
    try:
        import onnxruntime.quantization as q
    except ImportError:
        raise QuantizeError(f"--precision int8 needs onnxruntime and its quantisation tools: {INSTALL_HINT}") from None
    return q


# ----------------------------------------------------------------------------- calibration cells


@dataclasses.dataclass
class CalibrationCells:
    """Labelled cells an int8 model is calibrated and checked on.

    paths: image files (absolute); labels: their class names (model classes, or five-class names);
    source: what they are, for messages and the check record; files: ``{path, sha256, bytes}`` of each
    image; origins: the same of the source files a ``build-dataset`` manifest says they were cut from;
    own: they are the model's own validation cells (:func:`own_calibration_cells`).
    """

    paths: List[str]
    labels: List[str]
    source: str
    files: List[dict]
    origins: List[dict]
    own: bool = False

    def key(self, size: int, model_key: str) -> str:
        """16 hex digits naming the int8 file: the model, these cells (contents, labels, order), size, quantiser."""
        import onnxruntime
        h = hashlib.sha256(json.dumps([model_key, size, QUANTISER, onnxruntime.__version__]).encode())
        for f, label in zip(self.files, self.labels):
            h.update(f"{f['sha256']} {label}\n".encode())
        return h.hexdigest()[:16]

    def record(self) -> dict:
        return dict(source=self.source, n=len(self.paths), files=self.files, origins=self.origins)


def _fingerprints(paths: Iterable[PathLike]) -> List[dict]:
    """``{path (resolved), sha256, bytes}`` of each file (:func:`wbc_nnabla.fileio.file_sha256`)."""
    out = []
    for p in paths:
        try:
            out.append(dict(path=str(Path(p).resolve()), sha256=fileio.file_sha256(p), bytes=os.path.getsize(p)))
        except OSError as e:
            raise fileio.SourceError(f"{p}: calibration cell unreadable ({e.strerror or e})") from None
    return out


def _origins(dataset: Optional[Path], paths: Sequence[str]) -> List[dict]:
    """Fingerprints of the source files the images ``paths`` were cut from, per the ``manifest.csv`` of
    the ``build-dataset`` folder ``dataset`` (none when it is not one)."""
    from . import datasets
    if dataset is None or not datasets.is_dataset_folder(dataset):
        return []
    manifest = datasets.read_manifest(dataset)
    source = dict(zip(manifest["image_path"], manifest["source_path"]))
    found = sorted({source[p] for p in (str(Path(q).resolve()) for q in paths) if source.get(p)})
    return _fingerprints(p for p in found if Path(p).is_file())


def _dataset_of(source: Path) -> Optional[Path]:
    """The ``build-dataset`` folder a cell source is (or whose CSV it is), else None."""
    folder = source if source.is_dir() else source.parent
    return folder if (folder / "manifest.csv").is_file() else None


def given_calibration_cells(source: PathLike) -> CalibrationCells:
    """``--calibration CELLS``: any labelled cell source :func:`wbc_nnabla.fileio.read_cell_images` reads."""
    src = Path(source)
    table = fileio.read_cell_images(src, dedupe_flag=None)
    unlabelled = table["label"].fillna("").astype(str) == ""
    if unlabelled.any():
        raise InputError(f"--calibration {src}: {int(unlabelled.sum())} cells have no label (first: "
                         f"{table['path'][unlabelled].iloc[0]}); the int8 accuracy check needs labelled cells")
    paths = [str(p) for p in table["path"]]
    return CalibrationCells(paths, list(table["label"]), f"{src} ({len(paths)} cells)", _fingerprints(paths),
                            _origins(_dataset_of(src), paths))


def own_calibration_cells(model_path: PathLike, meta: dict) -> CalibrationCells:
    """The validation cells of the run that trained ``model_path``: ``dataset_dir/valid.csv`` of the
    ``config.json`` beside it, accepted only if they carry, in order, the labels the model recorded at
    export (:data:`wbc_nnabla.predictions.CALIBRATION_KEY`). Raises :class:`NoCalibrationCells` saying
    what is missing (then give cells with ``--calibration``)."""
    model = Path(model_path)
    hint = "; give labelled cells the model will not score with --calibration CELLS"
    try:
        rec_labels, _, names = read_calibration(meta.get(CALIBRATION_KEY), str(model))
    except PredictionsError as e:
        raise NoCalibrationCells(f"{e}{hint}") from None
    config = model.parent / "config.json"
    try:
        dataset = Path(json.loads(config.read_text(encoding="utf-8"))["config"]["dataset_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        raise NoCalibrationCells(f"{config}: no training config naming the model's dataset{hint}") from None
    valid = dataset / "valid.csv"
    if not valid.is_file():
        raise NoCalibrationCells(f"{valid}: the model's validation cells are gone{hint}")
    table = fileio.read_nnc_csv(valid)
    if list(table["label"]) != [names[i] for i in rec_labels]:
        raise NoCalibrationCells(f"{valid}: its {len(table)} cells are not the {len(rec_labels)} validation cells "
                                 f"{model.name} recorded (labels differ){hint}")
    paths = [str(p) for p in table["path"]]
    return CalibrationCells(paths, list(table["label"]), f"{valid} (the training run's validation cells, "
                            f"{len(paths)})", _fingerprints(paths), _origins(dataset, paths), own=True)


def check_disjoint(calibration: dict, scored: Sequence[str], where: str) -> None:
    """Refuse (:class:`CalibrationOverlap`) scoring any cell of ``calibration`` (:meth:`CalibrationCells.record`).

    A scored file overlaps when its resolved path, or its bytes (SHA-256), are those of a calibration
    image or of a source file it was cut from. Only files whose size a calibration file has are hashed
    (files of other sizes cannot have the same bytes), so the check costs a ``stat`` per cell.
    """
    known = calibration.get("files", []) + calibration.get("origins", [])
    paths = {f["path"] for f in known}
    by_size: Dict[int, set] = {}
    for f in known:
        by_size.setdefault(int(f["bytes"]), set()).add(f["sha256"])
    hits = []
    for p in scored:
        q = Path(p)
        try:
            size = q.stat().st_size
        except OSError:
            continue      # unreadable: the stage that opens it reports it
        if str(q.resolve()) in paths or (size in by_size and fileio.file_sha256(q) in by_size[size]):
            hits.append(str(p))
    if hits:
        raise CalibrationOverlap(f"{where}: {len(hits)} of the {len(scored)} cells to score are calibration cells "
                                 f"of the int8 model ({calibration.get('source')}), e.g. {hits[0]}; int8 is never "
                                 f"calibrated on the cells it scores: give other cells with --calibration, "
                                 f"or use --precision fp32")


# ----------------------------------------------------------------------------- the accuracy rule


def accuracy_rule(fp32: float, int8: float, max_drop: float = MAX_ACCURACY_DROP) -> bool:
    """True when int8 accuracy ``int8`` is at most ``max_drop`` below fp32's ``fp32`` (both in [0, 1])."""
    return fp32 - int8 <= max_drop + 1e-12


def _hits(probs: np.ndarray, labels: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """Per cell, whether the top class is the label; five-class labels (Neutrophil) are compared
    with the merged prediction (Band + Segment)."""
    pred = np.asarray(class_names, dtype=object)[probs.argmax(1)]
    five = [classes.to_class5(p) if p in classes.CLASSES6 else p for p in pred]
    return np.array([p == lab or (lab not in class_names and f == lab) for p, f, lab in zip(pred, five, labels)])


def _check_labels(labels: Sequence[str], class_names: Sequence[str], source: str) -> None:
    bad = sorted({lab for lab in labels if lab not in class_names and lab not in classes.CLASSES5})
    if bad:
        raise InputError(f"calibration cells {source}: label {bad[0]!r} is not a model class "
                         f"({', '.join(class_names)})")


def compare(fp32: np.ndarray, int8: np.ndarray, labels: Sequence[str], class_names: Sequence[str]) -> dict:
    """Accuracy of fp32 and int8 probabilities ``(N, C)`` against ``labels``, and their agreement."""
    return dict(fp32_accuracy=float(_hits(fp32, labels, class_names).mean()),
                int8_accuracy=float(_hits(int8, labels, class_names).mean()),
                same_class=float((fp32.argmax(1) == int8.argmax(1)).mean()),
                max_prob_diff=float(np.abs(fp32 - int8).max()), n=len(labels))


# ----------------------------------------------------------------------------- making


def _reader(batches: Iterable[np.ndarray]):
    """A ``CalibrationDataReader`` over ``batches`` (the class is made here: onnxruntime is imported
    only when int8 is asked for)."""
    q = require_quantiser()

    class Reader(q.CalibrationDataReader):
        """Feeds ``{"x": batch}`` of the calibration cells to onnxruntime's calibrator."""

        def __init__(self):
            self._it: Iterator[np.ndarray] = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"x": x}

    return Reader()


def _probs(run: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray]) -> np.ndarray:
    return np.concatenate([run(x) for x in batches])


def _quantise(prepared: Path, out: Path, batches: Iterable[np.ndarray], per_channel: bool) -> None:
    """``quantize_static`` of ``prepared`` into ``out`` (:data:`QUANTISER` settings), the nodes of
    :data:`FP32_OPS` left in fp32."""
    import onnx
    q = require_quantiser()
    keep = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type in FP32_OPS]
    q.quantize_static(str(prepared), str(out), _reader(batches), quant_format=q.QuantFormat.QDQ,
                      per_channel=per_channel, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      calibrate_method=q.CalibrationMethod.MinMax, nodes_to_exclude=keep)


def _copy_metadata(src: Path, dst: Path) -> None:
    """The wbc_nnabla metadata of the fp32 export onto the int8 file (class names, size...)."""
    import onnx
    a, b = onnx.load(str(src), load_external_data=False), onnx.load(str(dst), load_external_data=False)
    props = {p.key: p.value for p in b.metadata_props}
    props.update({p.key: p.value for p in a.metadata_props})
    onnx.helper.set_model_props(b, props)
    onnx.save(b, str(dst))


def choose(per_tensor: dict, per_channel: dict) -> str:
    """``per_channel`` or ``per_tensor`` (:func:`compare` figures of each on the calibration cells): of those
    that keep the accuracy rule, the one closer to the fp32 network (more cells of fp32's class, then the
    smaller largest probability difference; per channel on a tie); when neither keeps it, the more accurate.

    Why closeness and not the higher accuracy: the two differ by a few cells (noise), and the more
    "accurate" one can be the one further from fp32 (issue 48's reference run: per tensor 3 cells more
    accurate on its calibration cells, 6 of 480 validation cells changed class; per channel 2).
    """
    figures = {"per_tensor": per_tensor, "per_channel": per_channel}
    kept = [k for k, f in figures.items() if accuracy_rule(f["fp32_accuracy"], f["int8_accuracy"])]
    if not kept:
        return max(figures, key=lambda k: (figures[k]["int8_accuracy"], k == "per_channel"))
    return max(kept, key=lambda k: (figures[k]["same_class"], -figures[k]["max_prob_diff"], k == "per_channel"))


def make_int8(fp32_onnx: Path, out: Path, cells: CalibrationCells, class_names: Sequence[str], runner: Runner,
              batches: Batches) -> dict:
    """Quantise ``fp32_onnx`` on ``cells`` into ``out`` (per tensor and per channel, the better kept) and
    return the check record (:func:`accuracy_rule` applied; ``out`` written only when it holds)."""
    q = require_quantiser()
    _check_labels(cells.labels, class_names, cells.source)
    t0 = time.perf_counter()
    fp32 = _probs(runner(fp32_onnx), batches(cells.paths))
    found = {}
    with tempfile.TemporaryDirectory(prefix="wbc_int8_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        q.quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        for name, per_channel in (("per_tensor", False), ("per_channel", True)):
            made = Path(tmp) / f"{name}.onnx"
            _quantise(prepared, made, batches(cells.paths), per_channel)
            found[name] = (made, compare(fp32, _probs(runner(made), batches(cells.paths)), cells.labels, class_names))
        chosen = choose(found["per_tensor"][1], found["per_channel"][1])
        stats = found[chosen][1]
        accepted = accuracy_rule(stats["fp32_accuracy"], stats["int8_accuracy"])
        if accepted:
            _copy_metadata(fp32_onnx, found[chosen][0])
            with outputs.atomic_path(out) as tmp_out:
                os.replace(found[chosen][0], tmp_out)
    import onnxruntime
    return dict(format="wbc_nnabla-int8/1", accepted=accepted, chosen=chosen, **stats,
                drop=stats["fp32_accuracy"] - stats["int8_accuracy"], max_drop=MAX_ACCURACY_DROP,
                candidates={k: v[1] for k, v in found.items()}, fp32_probs=fp32,
                quantiser=dict(QUANTISER, onnxruntime=onnxruntime.__version__),
                seconds=round(time.perf_counter() - t0, 1),
                created=datetime.datetime.now().isoformat(timespec="seconds"))


def _refusal(record: dict, where: str) -> Int8Refused:
    """The refusal of a check record (:func:`make_int8`) whose accuracy rule failed, with its figures."""
    return Int8Refused(f"{where}: int8 refused: on its {record['n']} calibration cells "
                       f"({record['calibration']['source']}) int8 accuracy {record['int8_accuracy']:.4f} is "
                       f"{record['drop']:.4f} below fp32's {record['fp32_accuracy']:.4f} (at most "
                       f"{record['max_drop']} allowed; checked {record['created']}); use --precision fp32, "
                       f"or calibrate on other cells with --calibration")


def _record_match(record: dict, meta: dict, size: int) -> Optional[dict]:
    """For the model's own cells at the size they were recorded at: max |p_fp32 - p_recorded| (a warning
    above :data:`RECORD_TOLERANCE`: the cells found may not be the ones the model recorded)."""
    trained = (meta.get("training") or {}).get("trained_size")
    if not meta.get(CALIBRATION_KEY) or trained != size:
        return None
    _, recorded, _ = read_calibration(meta[CALIBRATION_KEY], "model")
    fp32 = np.asarray(record["fp32_probs"])
    if fp32.shape != recorded.shape:
        return None
    diff = float(np.abs(fp32 - recorded).max())
    if diff > RECORD_TOLERANCE:
        log.warning("int8 calibration: the fp32 probabilities of %s differ from those the model recorded by "
                    "up to %.2g: the cells found may not be its validation cells", record["calibration"]["source"],
                    diff)
    return dict(max_prob_diff=diff, tolerance=RECORD_TOLERANCE)


def int8_folder(fp32_onnx: Path) -> Path:
    """Where int8 files go: beside the fp32 export in the ONNX cache (a temporary folder when not writable)."""
    from .export import cache_dir
    base = fp32_onnx.parent if fp32_onnx.parent.resolve() == cache_dir().resolve() else cache_dir()
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / "wbc_nnabla_onnx"


def prune(folder: Path, keep: int = CACHE_KEEP, protect: Sequence[Path] = ()) -> None:
    """Remove all but the ``keep`` newest int8 files (and their checks) in ``folder``."""
    checks = sorted((p for p in folder.glob("*-int8-*.json") if _INT8_NAME.fullmatch(p.name)),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in checks[keep:]:
        if old not in protect:
            old.with_suffix(".onnx").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


def int8_onnx(model_path: PathLike, fp32_onnx: Path, meta: dict, size: int, cells: CalibrationCells,
              runner: Runner, batches: Batches) -> Tuple[Path, dict]:
    """The int8 ONNX of a model and its check record, made once (:func:`make_int8`) and cached.

    model_path: the model file the user gave (its SHA-256 names the file); fp32_onnx: its fp32 export;
    meta: its description; size: input side (px) the cells are calibrated and scored at.
    Raises :class:`Int8Refused` (with the figures) when the accuracy rule fails, now or when it was checked.
    """
    model_key = fileio.file_sha256(model_path)
    stem = f"{Path(model_path).stem}-{model_key[:20]}-int8-{cells.key(size, model_key)}"
    folder = int8_folder(fp32_onnx)
    onnx_path, check_path = folder / f"{stem}.onnx", folder / f"{stem}.json"
    if check_path.is_file():
        record = json.loads(check_path.read_text(encoding="utf-8"))
        if not record["accepted"]:
            raise _refusal(record, str(model_path))
        if onnx_path.is_file():
            os.utime(check_path)
            return onnx_path, record
    log.info("making the int8 model of %s on %d calibration cells at %d px (once; cached in %s)", model_path,
             len(cells.paths), size, folder)
    record = make_int8(fp32_onnx, onnx_path, cells, meta["class_names"], runner, batches)
    record.update(model=str(model_path), model_sha256=model_key, size=size, calibration=cells.record(),
                  fp32_onnx=fp32_onnx.name)
    record["record_match"] = _record_match(record, meta, size) if cells.own else None
    del record["fp32_probs"]
    outputs.write_json(check_path, record)
    prune(folder, protect=[check_path])
    if not record["accepted"]:
        raise _refusal(record, str(model_path))
    return onnx_path, record


def batches_of(load: InputOf, batch: int = CALIBRATION_BATCH) -> Batches:
    """``paths -> batches (N, 3, S, S)`` of ``load``'s inputs, decoded by a small thread pool (cv2 releases
    the GIL), one batch at a time so memory stays at a batch whatever the cell count."""
    from concurrent.futures import ThreadPoolExecutor

    def run(paths: Sequence[str]) -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(max_workers=min(4, (os.cpu_count() or 1) + 1)) as pool:
            for i in range(0, len(paths), batch):
                yield np.stack(list(pool.map(load, paths[i:i + batch])))
    return run


def load_int8(model_path: Path, fp32_onnx: Path, meta: dict, size: int, calibration: Optional[PathLike],
              scored: Optional[Sequence[str]], engine_of: EngineOf, load: InputOf):
    """The engine of the int8 model of ``model_path`` (made if needed, :func:`int8_onnx`), with
    ``engine.precision = "int8"`` and ``engine.int8`` its check record.

    calibration: labelled cells (:func:`given_calibration_cells`); None: the model's own
    (:func:`own_calibration_cells`). scored: the paths to be scored, refused when they overlap the
    calibration cells (:func:`check_disjoint`), before anything is quantised.
    """
    cells = (given_calibration_cells(calibration) if calibration is not None
             else own_calibration_cells(model_path, meta))
    if scored is not None:
        check_disjoint(cells.record(), scored, str(model_path))
    onnx_path, record = int8_onnx(model_path, fp32_onnx, meta, size, cells, lambda p: engine_of(p).run,
                                  batches_of(load))
    engine = engine_of(onnx_path)
    engine.precision, engine.int8 = "int8", record
    return engine


def summary(record: Optional[dict]) -> Optional[dict]:
    """The check of an int8 model (:func:`int8_onnx`) without its per-file lists (a run's JSON keeps it)."""
    if not record:
        return None
    keep = ("chosen", "fp32_accuracy", "int8_accuracy", "drop", "max_drop", "same_class", "max_prob_diff", "n",
            "size", "created", "quantiser")
    return dict({k: record.get(k) for k in keep}, calibration=record["calibration"]["source"])


# ----------------------------------------------------------------------------- auto


def read_choice(path: Optional[PathLike] = None) -> dict:
    """The measured choice ``auto`` follows (``path``, default :data:`CHOICE_FILE`): ``order``
    (``[backend, precision]`` pairs, fastest first) and how it was measured; :data:`FP32_ORDER` when
    the file is absent."""
    path = Path(path or CHOICE_FILE)
    try:
        choice = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return dict(order=[list(p) for p in FP32_ORDER], measured=None)
    except ValueError as e:
        raise ModelError(f"{path}: not a measured choice ({e})") from None
    if not all(isinstance(p, list) and len(p) == 2 and p[1] in ("fp32", "int8") for p in choice.get("order", [])):
        raise ModelError(f"{path}: 'order' must list [backend, precision] pairs")
    return choice


def choice_from_measurement(predict_rates: Dict[Tuple[str, str], float], accuracy: Dict[str, dict]) -> dict:
    """The choice file's contents from a benchmark run.

    predict_rates: whole-``predict`` images/s per ``(backend, precision)`` (all cores);
    accuracy: per benchmark set, :func:`compare`'s figures of fp32 vs int8.
    int8 pairs are kept only when :func:`accuracy_rule` holds on every set (and there is one).
    """
    holds = bool(accuracy) and all(accuracy_rule(a["fp32_accuracy"], a["int8_accuracy"]) for a in accuracy.values())
    pairs = sorted(predict_rates, key=lambda p: -predict_rates[p])
    order = [list(p) for p in pairs if p[1] == "fp32" or holds]
    return dict(order=order, int8_rule_holds_on_every_set=holds, max_drop=MAX_ACCURACY_DROP,
                predict_img_per_s={f"{b}/{p}": round(r, 2) for (b, p), r in predict_rates.items()},
                accuracy=accuracy)


def candidates(backend: str, precision: str, onnx_model: bool, on_gpu: bool,
               available: Sequence[str]) -> List[Tuple[str, str]]:
    """The ``(backend, precision)`` pairs to try in order (the first that loads is used).

    backend, precision: as asked (``auto`` or a name). ``auto``/``auto``: nnabla fp32 on a GPU context
    (for a ``.nnp``/``.h5``), else :data:`CHOICE_FILE`'s order, keeping the available pairs (int8 needs
    onnxruntime; a bare ONNX model cannot run on nnabla). An explicit backend with ``auto`` precision
    is fp32; int8 runs on onnxruntime only.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        if backend not in ("auto", "onnxruntime"):
            raise InputError(f"--precision int8 runs on onnxruntime, not {backend} (use --backend onnxruntime "
                             f"or auto)")
        require_quantiser()
        return [("onnxruntime", "int8")]
    if backend != "auto":
        return [(backend, "fp32")]
    if on_gpu and not onnx_model:
        return [("nnabla", "fp32")]
    order = [tuple(p) for p in read_choice()["order"]]
    fp32_only = precision == "fp32"
    pairs = [(b, p) for b, p in order if b in available and not (onnx_model and b == "nnabla")
             and not (fp32_only and p == "int8")]
    return pairs or [next((b, "fp32") for b, _ in FP32_ORDER if b in available and not (onnx_model and b == "nnabla"))]


__all__ = ["CHOICE_FILE", "CalibrationCells", "CalibrationOverlap", "Int8Refused", "MAX_ACCURACY_DROP",
           "NoCalibrationCells", "PRECISIONS", "QuantizeError", "accuracy_rule", "candidates", "check_disjoint",
           "choice_from_measurement", "compare", "given_calibration_cells", "int8_onnx", "load_int8", "make_int8",
           "own_calibration_cells", "read_choice", "require_quantiser", "summary"]
