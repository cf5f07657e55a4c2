"""The stages of ``reproduce`` and their records: what each was made from, so a re-run skips only
what is complete and runs again every stage whose inputs changed.

:data:`STAGES` lists the stages in the order they run; :class:`StageRecords` keeps ``OUT/stages.json``;
:class:`Run` is one ``reproduce`` call (OUT, the settings, the records, the seconds of each stage).
nnabla-free.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, Optional, Tuple

import pandas as pd

from . import digests, outputs
from .presets import Config

log = logging.getLogger(__name__)

#: The command named by the marker of a reproduce output folder (:func:`wbc_nnabla.outputs.write_marker`).
COMMAND = "reproduce"
#: The stage records inside OUT (:class:`StageRecords`).
RECORDS_FILE = "stages.json"
#: The digests of the files the stages read, cached by size and times (:class:`~wbc_nnabla.digests.FileDigests`).
DIGESTS_FILE = ".file_digests.json"


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
TABLES = ("manifest.csv", "train.csv", "valid.csv")
_TRAIN = ("batch_size", "train_size", "seed", "arch", "context", "train_eval_limit", "bn_recalibration", "recipe")
_PREDICT = ("infer_size", "batch_size", "backend", "adapt", "tta")
_SCORE = ("pending_threshold", "target_accuracy")

#: The stages of :func:`reproduce` in the order they run.
STAGES: Dict[str, Stage] = {s.name: s for s in (
    Stage("split", "split", ("split",), ("seed", "inference_fraction", "pseudo_smears", "cells_per_smear"),
          ("split/teacher.csv", "split/inference.csv")),
    Stage("dataset_A", "dataset ①", ("dataset_A",), _DATASET + ("valid_fraction", "train_size", "total_a"),
          tuple(f"dataset_A/{t}" for t in TABLES)),
    Stage("dataset_B", "dataset ②", ("dataset_B",), _DATASET + ("valid_fraction", "train_size", "total_b"),
          tuple(f"dataset_B/{t}" for t in TABLES)),
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


def table_digest(table: pd.DataFrame) -> str:
    """SHA-256 of a cell table's cells: resolved paths, labels, smears and centres (the image bytes:
    :meth:`wbc_nnabla.digests.FileDigests.files`)."""
    text = table[["path", "label", "smear", "x", "y"]].to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class StageRecords:
    """``OUT/stages.json``: per stage, what it was made from and the SHA-256 of the files it wrote.

    A stage's record is written (atomically) when it starts, with ``done``
    false, and again once its outputs are in place, with ``done`` true and the
    digests of its :attr:`Stage.results`. ``made_from`` is
    ``{"settings": {field: value}, "inputs": {name: digest}}``. The digests of every file read
    (images included) are cached in :data:`DIGESTS_FILE`, so a re-run hashes only what changed.
    """

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / RECORDS_FILE
        self.records: Dict[str, dict] = read_json(self.path)
        self.files = digests.FileDigests(self.out / DIGESTS_FILE)

    def digest(self, path) -> Optional[str]:
        """SHA-256 (hex) of a file (absolute, or relative to OUT); None when it is not a file."""
        return self.files.file(Path(path) if Path(path).is_absolute() else self.out / path)

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
        self.files.save()

    def finish(self, stage: Stage) -> None:
        """Record that ``stage`` finished, with the digests of its result files."""
        rec = self.records[stage.name]
        rec.update(done=True, results={rel: self.digest(rel) for rel in stage.results})
        outputs.write_json(self.path, self.records)
        self.files.save()

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
class Run:
    """One :func:`reproduce` call: OUT, the settings, the stage records and the seconds of each stage run."""

    out: Path
    cfg: Config
    records: StageRecords
    progress: bool
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    t0: float = dataclasses.field(default_factory=time.perf_counter)

    def digests(self, paths: Iterable[Path]) -> dict:
        """``{path (relative to OUT when inside it): SHA-256}`` of input files; FileNotFoundError for a missing one
        (a stage's record never stands for a file it could not read)."""
        out = {}
        for p in paths:
            p = Path(p)
            try:
                name = p.relative_to(self.out).as_posix()
            except ValueError:
                name = str(p)
            # resolved here: a path relative to the working folder is not one relative to OUT
            out[name] = self.records.digest(p.resolve())
            if out[name] is None:
                raise FileNotFoundError(f"{p}: not found, yet a stage of {self.out} reads it")
        return out

    def images(self, table_csv: Path) -> str:
        """One SHA-256 over the bytes of every image a cell CSV lists (:func:`wbc_nnabla.digests.listed_images`)."""
        return self.records.files.files(digests.listed_images(table_csv), base=self.out)

    def dataset(self, folder: Path) -> str:
        """:func:`wbc_nnabla.digests.dataset_digest` of an NNC dataset folder (what training reads)."""
        return digests.dataset_digest(folder, self.records.files)

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


def read_json(path: Path) -> dict:
    """The JSON object in ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
