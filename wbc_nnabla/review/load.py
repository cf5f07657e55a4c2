"""From a predictions CSV to an open review database: checks first, then nothing or everything written.

:func:`open_review` reads the predictions with their one reader
(:func:`wbc_nnabla.predictions.read_predictions`), marks the "judgement pending" cells with the
scoring stage's rule (:func:`wbc_nnabla.scoring.pending_flags`; ``model``: the cut-off set on the
model's calibration cells, :func:`wbc_nnabla.scoring.model_cutoff`, as ``score
--pending-threshold model`` does), checks every image is still there, and creates the database
or checks that an existing one holds the same cells. Any failure raises
:class:`~wbc_nnabla.review.db.ReviewError` naming the file before anything is written.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd

from .. import scoring
from ..predictions import PROB_COLUMNS, PredictionsError, read_predictions
from . import db
from .db import ReviewDB, ReviewError

from ..errors import PathLike
#: Suffix of the default database beside the predictions CSV: ``pred.csv`` -> ``pred.review.sqlite``.
DB_SUFFIX = ".review.sqlite"
#: Decimals the cells' digest rounds the probabilities to (the database stores 6).
DIGEST_DECIMALS = 5


def default_db(predictions: PathLike) -> Path:
    """The review database a predictions CSV gets when ``--db`` is not given (beside it)."""
    p = Path(predictions)
    return p.with_name(p.stem + DB_SUFFIX)


def image_paths(cells: pd.DataFrame) -> List[str]:
    """Absolute image path of each read predictions row (relative paths start from the CSV's folder)."""
    base = cells.attrs.get("base_dir")
    out = []
    for p in cells["path"]:
        q = Path(p)
        out.append(str((q if q.is_absolute() or base is None else Path(base) / q).resolve()))
    return out


def check_images(paths: List[str], predictions: PathLike) -> None:
    """Refuse predictions whose images are gone (moved or deleted since the prediction)."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ReviewError(f"{missing[0]}: image not found ({len(missing)} of {len(paths)} images listed in "
                          f"{predictions} are missing; moved or deleted since the prediction?)")


def cells_digest(paths: List[str], cells: pd.DataFrame) -> str:
    """SHA-256 of what the review is about: each cell's image, smear, AI class and probabilities."""
    h = hashlib.sha256()
    probs = np.round(cells[list(PROB_COLUMNS)].to_numpy(np.float64), DIGEST_DECIMALS)
    for path, smear, ai, row in zip(paths, cells["smear"], cells["pred6"], probs):
        h.update(json.dumps([path, str(smear), ai, [float(v) for v in row]]).encode())
    return h.hexdigest()


def pending_cutoff(predictions: PathLike, threshold) -> Optional[dict]:
    """``{threshold, source}`` of ``--pending-threshold`` (a number, ``model`` or None: no pending group)."""
    if threshold is None:
        return None
    try:
        if isinstance(threshold, str) and threshold.strip().lower() == scoring.MODEL_CUTOFF:
            cut = scoring.model_cutoff(predictions)
            return {"threshold": float(cut["threshold"]), "source": "model", "target": cut["target"]}
        value = float(threshold)
    except PredictionsError as e:
        raise ReviewError(str(e)) from None
    except (TypeError, ValueError):
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise ReviewError(f"--pending-threshold {threshold!r}: expected a probability in [0, 1] or 'model'")
    return {"threshold": value, "source": "given"}


def _cell_rows(cells: pd.DataFrame, paths: List[str], cut: Optional[dict]) -> List[dict]:
    pend = scoring.pending_flags(cells, cut["threshold"] if cut else None)
    probs = cells[list(PROB_COLUMNS)].to_numpy(np.float64)
    return [{"smear": str(s), "position": i, "path": p, "listed_path": str(lp), "ai": ai, "probs": probs[i],
             "pending": bool(pend["pending6"].iat[i]), "pending_reason": str(pend["reason"].iat[i])}
            for i, (s, p, lp, ai) in enumerate(zip(cells["smear"], paths, cells["path"], cells["pred6"]))]


def read(predictions: PathLike) -> pd.DataFrame:
    """The predictions CSV read and checked (:class:`ReviewError` naming the file)."""
    try:
        return read_predictions(predictions)
    except PredictionsError as e:
        raise ReviewError(str(e)) from None


def open_review(predictions: PathLike, db_path: Optional[PathLike] = None, pending_threshold=None) -> ReviewDB:
    """The review database of ``predictions``: created (first time) or opened and checked.

    db_path: default :func:`default_db`. pending_threshold: a number in [0, 1], ``"model"`` or None.
    Refused, with nothing written: a file at ``db_path`` that is not a review database of this
    version; a database made from other cells or another run's predictions (both files named);
    an image the predictions list that is gone; a cut-off other than the one the review began with.
    """
    predictions = Path(predictions)
    db_path = Path(db_path) if db_path is not None else default_db(predictions)
    existing = db_path.exists() and not (db_path.is_file() and db_path.stat().st_size == 0)
    if existing:
        db.check_file(db_path)
    cells = read(predictions)
    paths = image_paths(cells)
    check_images(paths, predictions)
    digest = cells_digest(paths, cells)
    if existing:
        review = ReviewDB(db_path)
        _check_same(review, predictions, digest, pending_threshold)
        return review
    cut = pending_cutoff(predictions, pending_threshold)
    if db_path.exists():
        db_path.unlink()        # an empty file (e.g. made by mktemp): nothing to lose
    meta = {"format": "wbc_nnabla review", "predictions": str(predictions.resolve()), "cells_sha256": digest,
            "n_cells": len(cells), "pending_cutoff": cut, "created": db.now()}
    db.create(db_path, sorted(pd.unique(cells["smear"]).astype(str)), _cell_rows(cells, paths, cut), meta)
    return ReviewDB(db_path)


def _check_same(review: ReviewDB, predictions: Path, digest: str, pending_threshold) -> None:
    """Refuse predictions other than those the review was made from, or another pending cut-off."""
    meta = review.meta()
    if meta.get("cells_sha256") != digest:
        raise ReviewError(f"{predictions} does not match the review database {review.path}: it was made from "
                          f"{meta.get('predictions')} ({meta.get('n_cells')} cells), and these predictions list "
                          f"other cells or another run's probabilities; give that predictions CSV, or another --db")
    if pending_threshold is None:
        return
    cut = pending_cutoff(predictions, pending_threshold)
    stored = meta.get("pending_cutoff")
    if stored is None or abs(stored["threshold"] - cut["threshold"]) > 1e-12:
        was = "none" if stored is None else f"{stored['threshold']:g} ({stored['source']})"
        raise ReviewError(f"{review.path}: the review began with pending cut-off {was}, not "
                          f"{cut['threshold']:g}; leave out --pending-threshold to go on with it, or give another --db")
