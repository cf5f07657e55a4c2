"""The paper's whole study in one call: ``reproduce`` and ``demo``.

Stages (:data:`STAGES`; each writes its own output under ``OUT``)::

    split/              teacher.csv, inference.csv (held-out cells, smears), split.json
    dataset_A/          dataset ①, background removed          (datasets.build_dataset)
    dataset_B/          dataset ②, background kept
    dataset_inference/  the inference set (crop, resize, no augmentation)
    model_A/            WBC Model A (training.train, pretrained or scratch)
    model_B/            WBC Model B (fine-tuned from Model A)
    predictions_A.csv, predictions_B.csv (+ .json run files)     (predictor.predict)
    score_A/, score_B/, compare/                                 (scoring.score / compare)
    gradcam/            Grad-CAM of the disagreement examples    (gradcam.GradCAM)
    report.html, report.md, figures/, summary.json, config.json
    stages.json         what each stage was made from, digests of what it wrote

A stage is complete when its record in ``stages.json`` (:class:`StageRecords`)
says it finished from the same inputs: the source cells (resolved paths,
labels, smears, centres), the settings it depends on and the SHA-256 of the
files it reads. A re-run skips complete stages (an interrupted run resumes,
training from its last checkpoint) and runs again every stage whose inputs
changed, and so every stage after it. ``OUT`` must be new, empty or an
earlier ``reproduce`` output (its :data:`wbc_nnabla.outputs.OUTPUT_MARKER`);
inside it a stage replaces only what its own record says it wrote.

Presets (:data:`PRESETS`): ``paper`` is the paper's recipe (section II:
crop 750, train 480 / infer 320, totals 2,385 / 3,284, AdaBound, 300 + 300
epochs, ImageNet start when the weights file is present); ``recommended`` is
the same but infers at the training scale (see docs/method.md, "480/320");
``demo`` is scaled down so ``make demo`` finishes in minutes on 2 CPU cores.
``recommended`` also trains with the ``robust`` recipe and adapts each model to the
inference cells (``adapt``: AdaBN and WBC scale) before predicting, for cells from
another lab (docs/cross_site.md); ``paper`` stays faithful to the paper.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import time
import typing
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Tuple

import numpy as np
import pandas as pd

# Stages that import nnabla (models, training, inference, gradcam) are imported inside the
# functions that run them: the CLI builds its reproduce flags from Config without loading nnabla.
from . import classes, fileio, outputs, sampling
from .errors import InputError
from .recipe import (ARCH_NAMES, BACKEND_NAMES, BATCH_SIZE, BN_RECALIBRATION_IMAGES, CONTEXT_NAMES, MAX_INPUT_SIZE,
                     PAPER, RECIPE_NAMES, TrainConfig, check_ranges, recipe_augmentation, setting)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config:
    """Every setting of a reproduction run (units: pixels, epochs, images).

    Each field but ``preset`` is also a ``reproduce``/``demo`` flag (:func:`wbc_nnabla.recipe.setting`:
    its help text is the field's documentation).
    """

    preset: str = "paper"
    crop: int = setting(PAPER.crop, f"crop side in pixels around each cell (paper: {PAPER.crop})")
    train_size: int = setting(PAPER.train_size, f"training input side in pixels (paper: {PAPER.train_size})")
    infer_size: int = setting(PAPER.infer_size, f"inference input side in pixels (paper: {PAPER.infer_size})")
    total_a: int = setting(PAPER.total_a, f"images in dataset ① after balancing (paper: {PAPER.total_a})")
    total_b: int = setting(PAPER.total_b, f"images in dataset ② after balancing (paper: {PAPER.total_b})")
    epochs_a: int = setting(PAPER.epochs, f"epochs of Model A (paper: {PAPER.epochs})")
    epochs_b: int = setting(PAPER.epochs, f"epochs of Model B (paper: {PAPER.epochs})")
    batch_size: int = setting(BATCH_SIZE, "images per iteration")
    train_eval_limit: Optional[int] = setting(
        None, "Training Error over a seeded class-stratified sample of N training images (default: all, as NNC)")
    bn_recalibration: int = setting(
        BN_RECALIBRATION_IMAGES, metavar="N",
        help=f"re-estimate BatchNorm statistics on N clean training images (default {BN_RECALIBRATION_IMAGES}; "
             f"0: as NNC)")
    arch: str = setting(PAPER.arch, f"network (paper: {PAPER.arch})", choices=ARCH_NAMES)
    pretrained: str = setting("auto", "auto (ImageNet when the weights file is present), imagenet, none or a file")
    valid_fraction: float = setting(0.2, "validation share of the teacher cells")
    inference_fraction: float = setting(0.2, "share of SOURCE held out as the inference set")
    pseudo_smears: Optional[int] = setting(None, "group held-out cells without smear ids into N smears")
    cells_per_smear: Optional[int] = setting(None, "cells per pseudo-smear")
    dedupe: bool = setting(False, "drop cells that SOURCE (or --inference) lists twice with the same label and "
                                  "smear, and report how many (default: a repeated cell is an error)")
    skip_bad: bool = setting(False, "skip unreadable images (listed in each dataset's build_report.md) "
                                    "instead of stopping")
    seed: int = setting(0, "seed of every random choice")
    backend: str = setting("auto", "inference backend", choices=BACKEND_NAMES)
    context: str = setting("cpu", "nnabla context for training", choices=CONTEXT_NAMES)
    pending_threshold: Optional[float] = setting(None, "judgement-pending cut-off on the top probability")
    target_accuracy: float = setting(0.99, "accuracy the pending cut-off is calibrated to")
    gradcam_examples: int = setting(8, "disagreeing cells shown with Grad-CAM")
    recipe: str = setting("paper", "training recipe of both models: paper, or robust (colour terms and a wide "
                                   "Magnification; docs/cross_site.md)", choices=RECIPE_NAMES)
    adapt: bool = setting(False, "adapt each model to the inference cells before predicting (AdaBN and WBC "
                                 "scale, `wbc-nnabla adapt`; labels unused)")
    tta: bool = setting(False, "test-time augmentation: average each cell's 8 turned and mirrored views "
                               "(`predict --tta`; 8x the inference time)")


PRESETS: Dict[str, dict] = {
    "paper": {},
    "recommended": dict(infer_size=PAPER.train_size, recipe="robust", adapt=True),
    "demo": dict(crop=360, train_size=48, infer_size=48, total_a=360, total_b=360, epochs_a=5, epochs_b=3,
                 batch_size=16, train_eval_limit=96, pretrained="none", inference_fraction=1 / 3,
                 pseudo_smears=4, cells_per_smear=10, gradcam_examples=6),
}


def make_config(preset: str = "paper", config_file: Optional[str] = None, **overrides) -> Config:
    """The effective configuration: preset, then a JSON config file, then explicit overrides (not None)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    if config_file:
        try:
            loaded = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{config_file}: not a readable JSON config ({e})") from None
        if not isinstance(loaded, dict):
            raise InputError(f"{config_file}: expected a JSON object of settings ({{\"epochs_a\": 300, ...}}), "
                             f"got a {type(loaded).__name__}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    hints = typing.get_type_hints(Config)
    for name, value in values.items():
        if not _has_type(value, hints[name]):
            where = f"{config_file}: " if config_file and name in loaded else ""
            raise InputError(f"{where}{name} must be {_type_name(hints[name])}, got {value!r}")
    cfg = Config(**values)
    check_config(cfg)
    return cfg


def _has_type(value, kind) -> bool:
    """Whether a setting's ``value`` fits its field type ``kind`` (int, float, str, bool or an Optional of
    one; an int fits a float field, a bool fits only a bool field: JSON's ``true`` is no epoch count)."""
    if typing.get_origin(kind) is typing.Union:                  # Optional[X]
        return value is None or any(_has_type(value, k) for k in typing.get_args(kind) if k is not type(None))
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _type_name(kind) -> str:
    """``int`` -> "an integer", ``Optional[int]`` -> "an integer or null", ..."""
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if typing.get_origin(kind) is typing.Union:
        return " or ".join(words[k] for k in typing.get_args(kind) if k is not type(None)) + " or null"
    return words[kind]


def check_config(cfg: Config) -> None:
    """Raise a :class:`~wbc_nnabla.errors.WBCError` naming the first setting of ``cfg`` out of its range.

    Run before ``reproduce`` writes anything: the settings of both training runs
    (:meth:`~wbc_nnabla.recipe.TrainConfig.validate` of :func:`train_config`) and those of the
    other stages, which would otherwise fail only when their stage is reached, hours in.
    """
    sampling.check_seed(cfg.seed)
    for name, value, names in (("backend", cfg.backend, BACKEND_NAMES), ("context", cfg.context, CONTEXT_NAMES)):
        if value not in names:
            raise InputError(f"{name} {value!r}: choose one of {', '.join(names)}")
    check_ranges([
        ("crop", cfg.crop, cfg.crop >= 1, ">= 1 pixel"),
        ("train_size", cfg.train_size, 32 <= cfg.train_size <= MAX_INPUT_SIZE, f"in [32, {MAX_INPUT_SIZE}] pixels"),
        ("infer_size", cfg.infer_size, 32 <= cfg.infer_size <= MAX_INPUT_SIZE, f"in [32, {MAX_INPUT_SIZE}] pixels"),
        ("epochs_a", cfg.epochs_a, cfg.epochs_a >= 1, ">= 1"),
        ("epochs_b", cfg.epochs_b, cfg.epochs_b >= 1, ">= 1"),
        ("batch_size", cfg.batch_size, cfg.batch_size >= 1, ">= 1 image"),
        ("total_a", cfg.total_a, cfg.total_a >= 1, ">= 1 image"),
        ("total_b", cfg.total_b, cfg.total_b >= 1, ">= 1 image"),
        ("valid_fraction", cfg.valid_fraction, 0.0 < cfg.valid_fraction < 1.0, "in (0, 1): training needs "
                                                                               "validation images"),
        ("inference_fraction", cfg.inference_fraction, 0.0 <= cfg.inference_fraction < 1.0, "in [0, 1)"),
        ("pseudo_smears", cfg.pseudo_smears, cfg.pseudo_smears is None or cfg.pseudo_smears >= 1, ">= 1 (or None)"),
        ("cells_per_smear", cfg.cells_per_smear, cfg.cells_per_smear is None or cfg.cells_per_smear >= 1,
         ">= 1 (or None)"),
        ("pending_threshold", cfg.pending_threshold,
         cfg.pending_threshold is None or 0.0 <= cfg.pending_threshold <= 1.0, "in [0, 1] (or None)"),
        ("target_accuracy", cfg.target_accuracy, 0.0 < cfg.target_accuracy <= 1.0, "in (0, 1]"),
        ("gradcam_examples", cfg.gradcam_examples, cfg.gradcam_examples >= 0, ">= 0 cells"),
    ], InputError)
    for epochs in (cfg.epochs_a, cfg.epochs_b):
        train_config(cfg, epochs).validate()


# ----------------------------------------------------------------------------- stage 0: split


def read_sources(source, inference=None, dedupe: bool = False) -> Tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """The teacher cells of ``source`` and the labeled inference set (None when not given), as cell tables.

    Both are read by :func:`wbc_nnabla.fileio.read_cells`: a cell listed twice is
    an error naming both rows, unless ``dedupe`` drops exact repeats (counted
    in ``attrs["duplicates_dropped"]``); in ``source``, which is split, a copy of
    a file under another name counts as a repeat (:func:`wbc_nnabla.fileio.content_keys`).
    Every teacher cell needs a label; a cell in both ``source`` and ``inference``
    (same resolved path, or the same bytes) is an error naming both rows, since
    Model A and B would be scored on cells they trained on.
    """
    table = fileio.read_cells(source, dedupe=dedupe, by_content=True)
    if (table["label"] == "").any():
        bad = table.loc[table["label"] == "", "source"].iloc[0]
        raise ValueError(f"{bad}: teacher cells need a label")
    if inference is None:
        return table, None
    held = fileio.read_cells(inference, dedupe=dedupe)
    keys = fileio.content_keys(table["path"].astype(str).tolist() + held["path"].astype(str).tolist())
    teacher_keys = dict(zip(keys[:len(table)], range(len(table))))
    shared = [(teacher_keys[k], i) for i, k in enumerate(keys[len(table):]) if k in teacher_keys]
    if shared:
        t, cell = table.iloc[shared[0][0]], held.iloc[shared[0][1]]
        what = (f"the same cell {cell['path']}" if t["path"] == cell["path"]
                else f"byte-identical copies of one image ({t['path']} and {cell['path']})")
        raise fileio.SourceError(f"{t['source']} and {cell['source']} list {what} as a teacher "
                             f"cell and as an inference cell ({len(shared)} such cell(s)): the models would be "
                             f"scored on cells they trained on; remove them from SOURCE or from the inference set")
    return table, held


def split_source(source, out_dir, cfg: Config, inference=None, overwrite: bool = False) -> dict:
    """Stage 0: teacher cells and the labeled inference set, with smear ids.

    With ``inference`` given, SOURCE is all teacher data. Otherwise a seeded,
    class-stratified part of SOURCE is held out (``inference_fraction``, or
    ``pseudo_smears * cells_per_smear`` cells when both are set) and never
    enters training. Held-out cells without a ``smear`` are grouped into
    ``pseudo_smears`` stand-in smears of ``cells_per_smear`` cells (seeded).
    Sources are read by :func:`read_sources` (``cfg.dedupe``).
    Writes ``teacher.csv`` and ``inference.csv`` (``path,label,smear``, ``x,y``
    when the source gives cell centres, and ``source_row``: the ``file:row``
    where the user listed each cell, which later errors name) and ``split.json``
    (returned). ``out_dir`` is replaced only with ``overwrite``.
    """
    table, held = read_sources(source, inference, cfg.dedupe)
    return _write_split(table, held, Path(out_dir), cfg, source, inference, overwrite)


def _split_tables(table: pd.DataFrame, held: Optional[pd.DataFrame], cfg: Config, source,
                  inference) -> Tuple[pd.DataFrame, pd.DataFrame, str]:
    """(teacher cells, inference cells with smear ids, a note saying how): the choices of :func:`split_source`."""
    rng = np.random.default_rng(cfg.seed)
    want_pseudo = cfg.pseudo_smears is not None and cfg.cells_per_smear is not None
    if held is not None:
        teacher, held = table, held.copy()
        note = f"inference set: {inference}"
    else:
        n = cfg.pseudo_smears * cfg.cells_per_smear if want_pseudo else int(round(cfg.inference_fraction * len(table)))
        if not 0 < n < len(table):
            raise ValueError(f"cannot hold out {n} of {len(table)} cells for inference; adjust "
                             f"--inference-fraction or --pseudo-smears/--cells-per-smear")
        pick = sampling.stratified_pick(table["label"], n, rng)
        held = table.iloc[pick].reset_index(drop=True)
        teacher = table.drop(index=table.index[pick]).reset_index(drop=True)
        note = f"{len(held)} cells held out of {source} (seed {cfg.seed}, stratified by class)"
    if (held["smear"] == "").all():
        if want_pseudo:
            order = rng.permutation(len(held))
            smear = np.empty(len(held), dtype=object)
            smear[order] = [f"P{i // cfg.cells_per_smear + 1:02d}" for i in range(len(held))]
            held["smear"] = smear
            note += (f"; no smear ids, so the held-out cells form {cfg.pseudo_smears} pseudo-smears of "
                     f"{cfg.cells_per_smear} cells (seeded) that stand in for the paper's smears")
        else:
            note += "; no smear ids: all inference cells are scored as one smear"
    return teacher, held, note


def _write_split(table: pd.DataFrame, held: Optional[pd.DataFrame], out_dir: Path, cfg: Config, source,
                 inference, overwrite: bool) -> dict:
    """Split (:func:`_split_tables`) and write ``teacher.csv``, ``inference.csv`` and ``split.json`` atomically."""
    dropped = sum(int(t.attrs.get("duplicates_dropped", 0)) for t in (table, held) if t is not None)
    teacher, held, note = _split_tables(table, held, cfg, source, inference)
    if dropped:
        note += f"; {dropped} repeated cell(s) dropped (--dedupe)"
        log.warning("split: %d repeated cell(s) of the sources dropped (--dedupe)", dropped)
    centres = ["x", "y"] if pd.concat([teacher[["x", "y"]], held[["x", "y"]]]).notna().any().any() else []
    columns = ["path", "label", "smear"] + centres + ["source_row"]
    with outputs.atomic_dir(out_dir, overwrite=overwrite) as tmp:
        teacher.rename(columns={"source": "source_row"})[columns].to_csv(tmp / "teacher.csv", index=False)
        held.rename(columns={"source": "source_row"})[columns].to_csv(tmp / "inference.csv", index=False)
        info = dict(source=str(source), inference=str(inference) if inference else None,
                    n_teacher=len(teacher), n_inference=len(held),
                    n_smears=int(held["smear"].replace("", "(all)").nunique()), note=note,
                    teacher_counts=teacher["label"].value_counts().sort_index().to_dict(),
                    inference_counts=held["label"].value_counts().sort_index().to_dict(),
                    duplicates_dropped=dropped)
        outputs.write_json(tmp / "split.json", info)
    return info


# ----------------------------------------------------------------------------- stage records

#: The command named by the marker of a reproduce output folder (:func:`wbc_nnabla.outputs.write_marker`).
COMMAND = "reproduce"
#: The stage records inside OUT (:class:`StageRecords`).
RECORDS_FILE = "stages.json"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of :func:`reproduce`.

    name: its record in ``stages.json`` and its key in ``summary.json`` ``timings``.
    label: its name in the log.
    outputs: the files and folders under OUT it writes (replaced only when its record is there).
    settings: the :class:`Config` fields its output depends on.
    results: the files under OUT whose SHA-256 its record keeps (what later stages read).
    always: runs on every call (cheap stages that read the whole run's results).
    """

    name: str
    label: str
    outputs: Tuple[str, ...]
    settings: Tuple[str, ...] = ()
    results: Tuple[str, ...] = ()
    always: bool = False


_DATASET = ("crop", "seed", "skip_bad")
_TABLES = ("manifest.csv", "train.csv", "valid.csv")
_TRAIN = ("batch_size", "train_size", "seed", "arch", "context", "train_eval_limit", "bn_recalibration", "recipe")
_PREDICT = ("infer_size", "batch_size", "backend", "adapt", "tta")
_SCORE = ("pending_threshold", "target_accuracy")

#: The stages of :func:`reproduce` in the order they run.
STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("split", "split", ("split",), ("seed", "inference_fraction", "pseudo_smears", "cells_per_smear"),
          ("split/teacher.csv", "split/inference.csv")),
    Stage("dataset_A", "dataset ①", ("dataset_A",), _DATASET + ("valid_fraction", "train_size", "total_a"),
          tuple(f"dataset_A/{t}" for t in _TABLES)),
    Stage("dataset_B", "dataset ②", ("dataset_B",), _DATASET + ("valid_fraction", "train_size", "total_b"),
          tuple(f"dataset_B/{t}" for t in _TABLES)),
    Stage("dataset_inference", "inference set", ("dataset_inference",), _DATASET + ("infer_size",),
          ("dataset_inference/manifest.csv", "dataset_inference/cells.csv")),
    Stage("train_A", "train A", ("model_A",), _TRAIN + ("epochs_a", "pretrained"), ("model_A/model.nnp",)),
    Stage("train_B", "train B", ("model_B",), _TRAIN + ("epochs_b",), ("model_B/model.nnp",)),
    Stage("predict_A", "predict A", ("predictions_A.csv", "adapted_A.nnp", "predictions_A.json"), _PREDICT,
          ("predictions_A.csv",)),
    Stage("predict_B", "predict B", ("predictions_B.csv", "adapted_B.nnp", "predictions_B.json"), _PREDICT,
          ("predictions_B.csv",)),
    Stage("score_A", "score A", ("score_A",), _SCORE, ("score_A/summary.json",)),
    Stage("score_B", "score B", ("score_B",), _SCORE, ("score_B/summary.json",)),
    Stage("compare", "compare", ("compare",), ("pending_threshold",), ("compare/comparison.json",)),
    Stage("gradcam", "gradcam", ("gradcam",), ("gradcam_examples", "infer_size"), always=True),
    Stage("report", "report", ("report.html", "report.md", "figures", "summary.json"), always=True),
)}


def _plain(obj):
    """``obj`` as it reads back from JSON (tuples become lists), so records compare equal."""
    return json.loads(json.dumps(obj, default=str))


def _table_digest(table: pd.DataFrame) -> str:
    """SHA-256 of a cell table's cells: resolved paths, labels, smears and centres (not the image bytes)."""
    text = table[["path", "label", "smear", "x", "y"]].to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StageRecords:
    """``OUT/stages.json``: per stage, what it was made from and the SHA-256 of the files it wrote.

    A stage's record is written (atomically) when it starts, with ``done``
    false, and again once its outputs are in place, with ``done`` true and the
    digests of its :attr:`Stage.results`. ``made_from`` is
    ``{"settings": {field: value}, "inputs": {name: digest}}``.
    """

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / RECORDS_FILE
        self.records: Dict[str, dict] = _read_json(self.path)
        self._digests: Dict[tuple, str] = {}

    def digest(self, path) -> Optional[str]:
        """SHA-256 (hex) of a file (absolute, or relative to OUT); None when it is not a file."""
        p = Path(path) if Path(path).is_absolute() else self.out / path
        if not p.is_file():
            return None
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            self._digests[key] = h.hexdigest()
        return self._digests[key]

    def made_from(self, stage: Stage, cfg: Config, inputs: dict) -> dict:
        """The record of what ``stage`` is made from: its settings in ``cfg`` and ``inputs`` (name: digest)."""
        return _plain({"settings": {k: getattr(cfg, k) for k in stage.settings}, "inputs": inputs})

    def check_owned(self, stage: Stage) -> None:
        """Refuse (FileExistsError) an output of ``stage`` in OUT that no record of the stage accounts for."""
        if stage.name in self.records:
            return
        for rel in stage.outputs:
            p = self.out / rel
            if p.exists() or p.is_symlink():
                raise FileExistsError(f"{p}: exists, but {self.path.name} has no record of the {stage.label} stage "
                                      f"writing it; reproduce replaces only its own outputs: move it away or use a "
                                      f"new output folder")

    def is_complete(self, stage: Stage, made_from: dict) -> bool:
        """Whether ``stage``'s record says it finished from ``made_from``, with its outputs as it wrote them.

        An output the stage did not write, or a result file changed or removed
        since it was written, is refused (FileExistsError): it is never replaced.
        """
        self.check_owned(stage)
        rec = self.records.get(stage.name, {})
        if not rec.get("done") or not any((self.out / rel).exists() for rel in stage.outputs):
            return False
        changed = [rel for rel, d in rec.get("results", {}).items() if self.digest(rel) != d]
        if changed:
            raise FileExistsError(f"{self.out / changed[0]}: changed or removed since the {stage.label} stage wrote "
                                  f"it ({self.path.name}); it is not replaced: move {self.out / stage.outputs[0]} "
                                  f"away to run the stage again, or use a new output folder")
        return rec.get("made_from") == made_from

    def started_from(self, stage: Stage, made_from: dict) -> bool:
        """Whether ``stage`` was started from ``made_from`` and has not finished (an interrupted run)."""
        rec = self.records.get(stage.name, {})
        return not rec.get("done") and rec.get("made_from") == made_from

    def start(self, stage: Stage, made_from: dict) -> None:
        """Record that ``stage`` starts from ``made_from`` (after checking it may replace its outputs)."""
        self.check_owned(stage)
        self.records[stage.name] = {"made_from": made_from, "done": False}
        outputs.write_json(self.path, self.records)

    def finish(self, stage: Stage) -> None:
        """Record that ``stage`` finished, with the digests of its result files."""
        rec = self.records[stage.name]
        rec.update(done=True, results={rel: self.digest(rel) for rel in stage.results})
        outputs.write_json(self.path, self.records)

    def check_settings(self, cfg: Config) -> None:
        """Refuse (ValueError) a ``cfg`` that changes a setting of a completed stage (its output would be lost)."""
        changes: Dict[str, list] = {}
        for stage in STAGES.values():
            rec = self.records.get(stage.name, {})
            if stage.always or not rec.get("done"):
                continue
            old = rec.get("made_from", {}).get("settings", {})
            for k, v in self.made_from(stage, cfg, {})["settings"].items():
                if old.get(k) != v:
                    changes.setdefault(k, [old.get(k), v, []])[2].append(stage.name)
        if changes:
            diff = "; ".join(f"{k} {o!r} -> {n!r} (complete: {', '.join(s)})" for k, (o, n, s) in changes.items())
            raise ValueError(f"{self.out} holds a run with another configuration ({diff}); use a new output folder")


@contextlib.contextmanager
def timer(name: str, timings: Dict[str, float]) -> Iterator[None]:
    """Time the ``with`` block: ``timings[name]`` = its wall-clock seconds (rounded to 0.1 s), when it succeeds."""
    t = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t, 1)


@dataclasses.dataclass
class _Run:
    """One :func:`reproduce` call: OUT, the settings, the stage records and the seconds of each stage run."""

    out: Path
    cfg: Config
    records: StageRecords
    progress: bool
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def digests(self, paths: Iterable[Path]) -> dict:
        """``{path (relative to OUT when inside it): SHA-256}`` of input files."""
        out = {}
        for p in paths:
            p = Path(p)
            try:
                name = p.relative_to(self.out).as_posix()
            except ValueError:
                name = str(p)
            out[name] = self.records.digest(p)
        return out

    def made_from(self, stage: Stage, inputs: dict) -> dict:
        """:meth:`StageRecords.made_from` with this run's settings."""
        return self.records.made_from(stage, self.cfg, inputs)

    def is_complete(self, stage: Stage, made_from: dict) -> bool:
        """:meth:`StageRecords.is_complete`, logging a skip."""
        done = self.records.is_complete(stage, made_from)
        if done:
            log.info("skip (complete): %s", stage.label)
        return done

    @contextlib.contextmanager
    def recording(self, stage: Stage, made_from: dict) -> Iterator[None]:
        """Run the ``with`` block as ``stage``: log it, record its start, time it, record it done."""
        log.info("run: %s", stage.label)
        self.records.start(stage, made_from)
        with timer(stage.name, self.timings):
            yield
        self.records.finish(stage)


# ----------------------------------------------------------------------------- the run


def reproduce(source, out, preset: str = "paper", inference=None, config_file: Optional[str] = None,
              progress: bool = True, **overrides) -> dict:
    """Run the paper's study end to end (sections II-III) and write ``OUT/report.html``.

    source: labeled teacher cells (anything :func:`wbc_nnabla.fileio.read_cells` reads).
    out: a new or empty folder, or an earlier ``reproduce`` output: its complete
        stages are skipped, those whose inputs changed run again (see the module doc).
    inference: a labeled inference set; when None, a seeded stratified part of
        ``source`` is held out (see :func:`split_source`).
    preset: see :func:`make_config`.
    config_file: see :func:`make_config`.
    overrides: see :func:`make_config`.

    Returns the headline summary (also in ``OUT/summary.json``).
    """
    cfg = make_config(preset, config_file, **overrides)
    tables = read_sources(source, inference, cfg.dedupe)   # bad sources fail before OUT is made
    run = _open_run(Path(out), cfg, source, inference, progress)
    split = _split_stage(run, tables, source, inference)
    teacher, held = run.out / "split" / "teacher.csv", run.out / "split" / "inference.csv"
    _dataset_stage(run, "dataset_A", teacher, background="remove", size=cfg.train_size, total=cfg.total_a,
                   valid_fraction=cfg.valid_fraction)
    _dataset_stage(run, "dataset_B", teacher, background="keep", size=cfg.train_size, total=cfg.total_b,
                   valid_fraction=cfg.valid_fraction)
    _dataset_stage(run, "dataset_inference", held, background="keep", size=cfg.infer_size, inference=True)
    model_a = _train_stage(run, "train_A", run.out / "dataset_A", cfg.epochs_a, pretrained=_pretrained(cfg))
    model_b = _train_stage(run, "train_B", run.out / "dataset_B", cfg.epochs_b, init=model_a)
    preds = {"A": _predict_stage(run, "A", model_a), "B": _predict_stage(run, "B", model_b)}
    results, comparison = _score_stages(run, preds)
    cams = _gradcam_stage(run, _predicting_model(run, "B", model_b), preds["B"], results["B"])
    return _report_stage(run, split, results, comparison, cams)


def _open_run(out: Path, cfg: Config, source, inference, progress: bool) -> _Run:
    """Check OUT, mark it as a reproduce output and save ``config.json``.

    OUT must be new, empty or an earlier reproduce output (its marker), hold
    no source and sit inside none; its completed stages must have been made
    with the same settings (:meth:`StageRecords.check_settings`).
    """
    sources = [source] + ([inference] if inference else [])
    outputs.check_not_inside(out, sources)
    for s in sources:
        if out.resolve() in Path(s).resolve().parents:
            raise fileio.SourceError(f"source {s} is inside the output folder {out}; choose another output "
                                 f"(reproduce replaces folders inside OUT, sources are never written)")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and outputs.marker_command(out) != COMMAND:
            raise FileExistsError(f"{out}: not empty and not a reproduce output (no {outputs.OUTPUT_MARKER} naming "
                                  f"reproduce); nothing was written: use a new or empty output folder")
    records = StageRecords(out)
    records.check_settings(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if outputs.marker_command(out) != COMMAND:
        outputs.write_marker(out, COMMAND)
    outputs.write_json(out / "config.json", dict(config=dataclasses.asdict(cfg), source=str(source),
                                            inference=str(inference) if inference else None,
                                            environment=outputs.environment()))
    return _Run(out, cfg, records, progress)


def _split_stage(run: _Run, tables: tuple, source, inference) -> dict:
    """Stage 0 (:func:`split_source`) unless its record says it split these very cells; returns ``split.json``.

    tables: ``(teacher table, inference table or None)`` of :func:`read_sources`.
    """
    stage = STAGES["split"]
    table, held = tables
    made_from = run.made_from(stage, {"source cells": _table_digest(table),
                                      "inference cells": None if held is None else _table_digest(held)})
    if not run.is_complete(stage, made_from):
        with run.recording(stage, made_from):
            _write_split(table, held, run.out / "split", run.cfg, source, inference, overwrite=True)
    return _read_json(run.out / "split" / "split.json")


def _dataset_stage(run: _Run, name: str, cells: Path, **build) -> None:
    """Build dataset ``name`` from a split CSV (:func:`wbc_nnabla.datasets.build_dataset`) unless it is complete."""
    from . import datasets
    stage = STAGES[name]
    made_from = run.made_from(stage, run.digests([cells]))
    if run.is_complete(stage, made_from):
        return
    with run.recording(stage, made_from):
        folder = datasets.build_dataset(cells, run.out / name, crop=run.cfg.crop, seed=run.cfg.seed,
                                        skip_bad=run.cfg.skip_bad, overwrite=True, progress=run.progress, **build)
    skipped = _read_json(folder / "build_report.json").get("skipped", [])
    if skipped:
        log.warning("%s: skipped %d bad image(s) (--skip-bad), listed in %s", stage.label, len(skipped),
                    folder / "build_report.md")


def _pretrained(cfg: Config) -> str:
    """Model A's start: ``cfg.pretrained``, with ``auto`` resolved to the ImageNet weights file or ``none``."""
    if cfg.pretrained != "auto":
        return cfg.pretrained
    from . import pretrained
    try:
        return str(pretrained.find_pretrained("imagenet", cfg.arch))
    except pretrained.PretrainedError as e:  # no file: the paper's ImageNet start is not possible here
        log.warning("ImageNet weights not found, so Model A trains from scratch: %s", e)
        return "none"


def _train_stage(run: _Run, name: str, dataset: Path, epochs: int, pretrained: str = "none",
                 init: Optional[Path] = None) -> Path:
    """Train a model (:func:`wbc_nnabla.training.train`) unless its record is complete; returns its ``model.nnp``.

    A run started from the same inputs resumes from its last checkpoint; any
    other earlier output of this stage is replaced.
    """
    from . import training
    stage, cfg = STAGES[name], run.cfg
    folder = run.out / stage.outputs[0]
    inputs = run.digests([dataset / t for t in _TABLES] + ([init] if init else []))
    inputs["pretrained"] = pretrained if not Path(pretrained).is_file() else \
        f"{pretrained} sha256:{run.records.digest(Path(pretrained).resolve())}"
    made_from = run.made_from(stage, inputs)
    if run.is_complete(stage, made_from):
        return folder / "model.nnp"
    resume = run.records.started_from(stage, made_from) and (folder / "checkpoint.json").is_file()
    with run.recording(stage, made_from):
        if folder.exists() and not resume:
            shutil.rmtree(folder)  # this stage's own earlier output: is_complete checked its record
        training.train(dataset, folder, train_config(cfg, epochs, pretrained, init, run.progress), resume=resume)
    return folder / "model.nnp"


def train_config(cfg: Config, epochs: int, pretrained: str = "none", init: Optional[Path] = None,
                 progress: bool = True) -> TrainConfig:
    """The :class:`~wbc_nnabla.recipe.TrainConfig` of one model of a run: Model A and Model B differ in
    ``epochs``, ``pretrained`` and ``init`` (Model A's ``model.nnp``) only."""
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, size=cfg.train_size, seed=cfg.seed,
                       pretrained=pretrained, init=init, arch=cfg.arch, context=cfg.context,
                       train_eval_limit=cfg.train_eval_limit, progress=progress,
                       bn_recalibration=cfg.bn_recalibration, augmentation=recipe_augmentation(cfg.recipe))


def _predict_stage(run: _Run, tag: str, model: Path) -> Path:
    """Model ``tag``'s predictions on the inference set (:func:`wbc_nnabla.predictor.predict`) unless complete."""
    from . import predictions, predictor as infer
    stage = STAGES[f"predict_{tag}"]
    path = run.out / stage.outputs[0]
    cells = run.out / "dataset_inference" / "cells.csv"
    made_from = run.made_from(stage, run.digests([model, cells, cells.with_name("manifest.csv")]))
    if not run.is_complete(stage, made_from):
        with run.recording(stage, made_from):
            if run.cfg.adapt:
                model = _adapt(model, cells, run.out / stage.outputs[1], run.cfg)
            df = infer.predict(model, cells, size=run.cfg.infer_size, batch_size=run.cfg.batch_size,
                               backend=run.cfg.backend, expected_classes=classes.CLASSES6, progress=run.progress,
                               tta=run.cfg.tta)
            # the CSV and its run JSON (as `wbc-nnabla predict` writes them, so `score --pending-threshold
            # model` reads the model's calibration cells); an earlier CSV here is this stage's own, left by
            # a run stopped before its record was finished (is_complete checked the record)
            predictions.write_predictions(df, path, overwrite=True,
                                          config=infer.run_config(df, model, cells))
    return path


def _predicting_model(run: _Run, tag: str, model: Path) -> Path:
    """The model whose calls ``predictions_TAG.csv`` holds: with ``adapt``, the one :func:`_adapt` wrote
    (what Grad-CAM must explain for its calls to be the predictions'), else ``model``."""
    adapted = run.out / STAGES[f"predict_{tag}"].outputs[1]
    return adapted if run.cfg.adapt and adapted.is_file() else model


def _adapt(model: Path, cells: Path, out: Path, cfg: Config) -> Path:
    """``model`` adapted to the inference cells at the inference size (:func:`wbc_nnabla.adaptation.adapt_batchnorm`),
    or ``model`` itself when it has no BatchNorm (GroupNorm: logged)."""
    from . import adaptation, modelfile
    if not adaptation.bn_statistics(modelfile.load_parameters(model)):
        log.info("%s has no BatchNorm statistics: predicting without adaptation", model)
        return model
    if out.exists():
        out.unlink()            # this stage's own earlier output: is_complete checked its record
    adaptation.adapt_batchnorm(model, cells, out, size=cfg.infer_size, seed=cfg.seed)
    return out


def _score_stages(run: _Run, preds: Dict[str, Path]):
    """Score both models and compare them (:mod:`wbc_nnabla.scoring`); write the folders that are not complete.

    Returns ``({"A": ScoreResult, "B": ScoreResult}, CompareResult)``, computed on every run (the report needs them).
    """
    from . import report, scoring
    results = {}
    for tag, path in preds.items():
        results[tag] = scoring.score(path, pending_threshold=run.cfg.pending_threshold,
                                     target_accuracy=run.cfg.target_accuracy)
        stage = STAGES[f"score_{tag}"]
        made_from = run.made_from(stage, run.digests([path]))
        if not run.is_complete(stage, made_from):
            with run.recording(stage, made_from):
                report.write_score(results[tag], run.out / stage.outputs[0], overwrite=True)
    comparison = _compare(results, run.cfg)
    stage = STAGES["compare"]
    made_from = run.made_from(stage, run.digests(preds.values()))
    if not run.is_complete(stage, made_from):
        with run.recording(stage, made_from):
            report.write_compare(comparison, run.out / stage.outputs[0], overwrite=True)
    return results, comparison


def _gradcam_stage(run: _Run, model: Path, preds: Path, result) -> list:
    """Grad-CAM of Model B's disagreements (:func:`_gradcam_examples`), on every run; returns the examples."""
    stage = STAGES["gradcam"]
    with run.recording(stage, run.made_from(stage, run.digests([model, preds]))):
        return _gradcam_examples(model, result, run.out / stage.outputs[0], run.cfg)


def _report_stage(run: _Run, split: dict, results: dict, comparison, cams: list) -> dict:
    """``summary.json``, ``report.html``/``.md`` and ``figures/`` on every run; marks ``config.json`` finished."""
    from . import reproduce_report
    summary = _headline(run.cfg, split, results, comparison, dict(run.timings), time.perf_counter() - run.t0)
    stage = STAGES["report"]
    with run.recording(stage, run.made_from(stage, {})):
        shutil.rmtree(run.out / "figures", ignore_errors=True)  # an earlier report's figures (record checked)
        outputs.write_json(run.out / "summary.json", summary)
        reproduce_report.write_reproduce_report(run.out, dataclasses.asdict(run.cfg), split, results["A"],
                                                results["B"], comparison, cams, summary)
    state = _read_json(run.out / "config.json")
    state["finished"] = True
    outputs.write_json(run.out / "config.json", state)
    return summary


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _compare(results: dict, cfg: Config):
    """Model A vs Model B (Fig. 9) on the cells ``score()`` already read and checked (not the CSVs again).

    Each model is scored again without the target accuracy, so ``compare/A`` and
    ``compare/B`` hold the plain score tables.
    """
    from . import scoring
    a, b = (scoring.score(results[k].cells, pending_threshold=cfg.pending_threshold) for k in ("A", "B"))
    return scoring.compare(a, b)


def _gradcam_examples(model, result, folder: Path, cfg: Config) -> list:
    """Grad-CAM overlays of up to ``cfg.gradcam_examples`` disagreeing cells of Model B (Fig. 10 + discussion).

    The most confident disagreements are shown (highest ``top6`` first, then by path).
    ``folder`` is replaced as a whole (removed when there is no disagreement).
    """
    from . import gradcam
    cells = result.cells
    wrong = cells[(cells["true6"] != "") & (cells["true6"] != cells["pred6"])]
    # the most confident disagreements first (then by path): independent of the CSV's row order
    wrong = wrong.sort_values(["top6", "path"], ascending=[False, True], kind="stable").head(cfg.gradcam_examples)
    if wrong.empty:
        shutil.rmtree(folder, ignore_errors=True)
        return []
    explainer = gradcam.GradCAM(model, size=cfg.infer_size)
    paths = list(wrong["path"])
    with outputs.atomic_dir(folder, overwrite=True) as tmp:
        # small inference crops (e.g. the demo's 48 px) are enlarged to 192 px for viewing
        written = gradcam.write_overlays(explainer, paths, tmp, stems=[Path(p).stem for p in paths],
                                         side_by_side=True, min_side=192, cams=False)
    return [dict(path=str(folder / w["overlay"]), cell=str(p), human=h, ai=a)
            for w, p, h, a in zip(written, paths, wrong["true6"], wrong["pred6"])]


def _headline(cfg, split, results, comparison, timings, seconds) -> dict:
    s = {"preset": cfg.preset, "seconds": round(seconds, 1), "timings": timings,
         "n_inference_cells": split.get("n_inference"), "n_smears": split.get("n_smears")}
    for name, r in results.items():
        for k in ("accuracy6_mean", "accuracy6_sd", "accuracy5_mean", "accuracy5_sd",
                  "accuracy6_pooled", "accuracy5_pooled", "best_smear", "worst_smear", "coverage"):
            s[f"{k}_{name}"] = r.summary.get(k)
    s.update({k: comparison.summary.get(k) for k in ("p_ranksum5", "p_ranksum6", "p_signedrank5", "p_signedrank6",
                                                   "mean_diff5", "mean_diff6")})
    return s


def demo(out="out/demo", progress: bool = True, **overrides) -> dict:
    """``reproduce`` on the embedded demo cells with the ``demo`` preset (what ``make demo`` runs)."""
    return reproduce(fileio.demo_data(), out, preset="demo", progress=progress, **overrides)
