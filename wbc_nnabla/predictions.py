"""The predictions CSV: the file joining inference and scoring (one owner for its schema).

One row per cell, columns::

    path, smear, label, pred6, pred5, prob_Basophil, prob_Eosinophil, prob_Lymph,
    prob_Mono, prob_Band, prob_Segment

(:data:`SIX_COLUMNS`; a model of another class set gives ``pred`` and
``prob_<name>`` columns, which the scoring stage refuses). This module builds
the table from a model's probabilities (:func:`predictions_table`), writes it
(:func:`write_predictions`) and reads it back validated
(:func:`read_predictions`), so :mod:`wbc_nnabla.predictor` and
:mod:`wbc_nnabla.scoring` share one definition. It never imports nnabla:
predictions of any model or tool can be read. See ``docs/scoring.md``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from . import classes, outputs
from .errors import PathLike, WBCError
from .classes import CLASSES5, CLASSES6

PathOrFrame = Union[str, os.PathLike, pd.DataFrame]

PROB_PREFIX = "prob_"
#: Probability columns of a six-class predictions CSV, in Table 1 order.
PROB_COLUMNS: Tuple[str, ...] = tuple(PROB_PREFIX + c for c in CLASSES6)
#: Columns written for a six-class model, in file order.
SIX_COLUMNS: Tuple[str, ...] = ("path", "smear", "label", "pred6", "pred5") + PROB_COLUMNS
REQUIRED_COLUMNS: Tuple[str, ...] = ("path", "pred6") + PROB_COLUMNS
OPTIONAL_COLUMNS: Tuple[str, ...] = ("smear", "label", "pred5")
#: Optional per-cell columns of the domain-shift check (:mod:`wbc_nnabla.sites.domain`), written by
#: ``predict`` for a model that stores a domain reference; older files do not have them.
DOMAIN_COLUMNS: Tuple[str, ...] = ("domain_distance", "outside_domain")
#: Smear name given to every cell when no cell of the file names a smear.
ALL_SMEARS = "(all)"
#: Smear name given to cells without smear when other cells have one.
NO_SMEAR = "(no smear)"
#: Tolerance on the sum of a row's probabilities (CSV rounding of float32 softmax).
PROB_SUM_TOL = 0.01
#: ``pred6`` may be a class whose probability is this much below the highest (near ties written
#: by another tool); a larger gap is a contradiction (:func:`read_predictions` refuses it).
PRED_TIE_TOL = 1e-6


#: ``predict --prior`` names: ``none`` (the model's probabilities as they are), ``normal``
#: (:data:`NORMAL_DIFFERENTIAL`) and ``estimate`` (each smear's own, :func:`estimate_prior`);
#: ``Class=share,...`` gives a lab's own (:func:`parse_prior`).
PRIOR_NAMES = ("none", "normal", "estimate")
#: ``--prior estimate``: the prior estimated from each smear's own cells (:func:`estimate_prior`).
PRIOR_ESTIMATE = "estimate"
#: :func:`estimate_prior` stops when no class share moves by more than this in one iteration ...
PRIOR_EM_TOL = 1e-6
#: ... or after this many iterations.
PRIOR_EM_MAX_ITER = 1000
#: Fewest cells of a smear whose prior ``--prior estimate`` estimates (the paper's smears have
#: 150-200 cells, section III; a handful of cells gives no differential to estimate).
PRIOR_MIN_CELLS = 50
#: An estimated share below this is reported as collapsed: the smear will (almost) never be given
#: that class. EM drives a class the model under-calls there (docs/research/cross_site_log.md: Band, every time).
PRIOR_COLLAPSED = 1e-3
#: A healthy adult's differential as shares of all WBCs, ``--prior normal``: the rounded middle of
#: the usual reference intervals (neutrophils 40-75 %, of them a few per cent bands; lymphocytes
#: 20-45 %; monocytes 2-10 %; eosinophils 1-6 %; basophils 0-1 %). Set from those intervals before
#: any foreign-site result and not changed after (docs/research/cross_site_log.md).
NORMAL_DIFFERENTIAL: Dict[str, float] = {"Band": 0.03, "Segment": 0.57, "Lymph": 0.30, "Mono": 0.06,
                                         "Eosinophil": 0.03, "Basophil": 0.01}


class PredictionsError(WBCError, ValueError):
    """A predictions file (or option) that cannot be scored; the message names file, line and column."""


# ----------------------------------------------------------------------------- class prior


def parse_prior(text: Union[str, Dict[str, float], None]) -> Optional[Dict[str, float]]:
    """The prior ``predict`` corrects towards: None for ``none``, :data:`NORMAL_DIFFERENTIAL` for
    ``normal``, else ``"Class=share,Class=share,..."`` (or a dict) of positive shares (any scale)."""
    if text == PRIOR_ESTIMATE:
        raise PredictionsError(f"prior {text!r} is estimated from a smear's cells by predict "
                               "(apply_smear_priors); give none, normal or Class=share,... here")
    if text is None or isinstance(text, dict):
        shares = text
    elif text in PRIOR_NAMES:
        shares = None if text == "none" else dict(NORMAL_DIFFERENTIAL)
    else:
        shares = {}
        for item in str(text).split(","):
            name, eq, value = item.partition("=")
            try:
                shares[name.strip()] = float(value) if eq else float("nan")
            except ValueError:
                shares[name.strip()] = float("nan")
    for name, v in (shares or {}).items():
        if not (np.isfinite(v) and v > 0):
            raise PredictionsError(f"prior {text!r}: {name!r} needs a positive share (expected "
                                   f"{' or '.join(PRIOR_NAMES)}, or Class=share,... e.g. Segment=0.57,Lymph=0.3)")
    return shares


def prior_weights(class_names: Sequence[str], prior: Dict[str, float],
                  train_prior: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Per-class factors ``(C,)``: the target share over the training share of each of ``class_names``.

    A ``Neutrophil`` class takes Band + Segment of ``prior``. ``train_prior`` None: the classes
    were balanced in training (``build-dataset``, like the paper's datasets, section II.3).
    """
    def share(shares: Dict[str, float], c: str) -> float:
        if c in shares:
            return shares[c]
        subtypes = [s for s in CLASSES6 if classes.to_class5(s) == c and s != c]
        if subtypes and all(s in shares for s in subtypes):
            return sum(shares[s] for s in subtypes)
        raise PredictionsError(f"prior gives no share for class {c!r} (the model's classes: "
                               f"{', '.join(class_names)})")
    target = np.array([share(prior, c) for c in class_names], np.float64)
    train = np.ones(len(class_names)) if train_prior is None else \
        np.array([share(train_prior, c) for c in class_names], np.float64)
    return (target / target.sum()) / (train / train.sum())


def apply_prior(probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Bayes' rule for a change of class prior (label shift; Saerens et al., Neural Comput. 2002):
    ``p'(c|x) = p(c|x) w_c / sum_k p(k|x) w_k`` on ``(N, C)`` probabilities, rows sum to 1."""
    q = np.asarray(probs, np.float64) * weights[None, :]
    return (q / q.sum(axis=1, keepdims=True)).astype(np.asarray(probs).dtype)


def estimate_prior(probs: np.ndarray, tol: float = PRIOR_EM_TOL,
                   max_iter: int = PRIOR_EM_MAX_ITER) -> Tuple[np.ndarray, int]:
    """The class shares ``(C,)`` of a group of cells, estimated from their ``(N, C)`` probabilities
    without labels (EM of Saerens, Latinne & Decaestecker, Neural Comput. 2002, section 2.3).

    The model was trained on balanced classes (section II.3); starting there, each step moves every
    cell's probabilities to the current shares (:func:`apply_prior`) and takes their mean as the
    next shares. Returns the shares (sum 1) and the iterations run. Written here: none of the
    libraries we depend on (scipy, pandas) has this EM.
    """
    p = np.asarray(probs, np.float64)
    n_classes = p.shape[1]
    shares = np.full(n_classes, 1.0 / n_classes)
    for it in range(1, max_iter + 1):
        new = apply_prior(p, shares * n_classes).mean(axis=0)
        moved = np.abs(new - shares).max()
        shares = new
        if moved < tol:
            break
    return shares, it


def apply_smear_priors(probs: np.ndarray, smears: Sequence[str],
                       class_names: Sequence[str]) -> Tuple[np.ndarray, Dict[str, dict]]:
    """``--prior estimate``: each smear's probabilities ``(N, C)`` moved to the class prior estimated
    from that smear's own cells (:func:`estimate_prior`); cells with no smear form one group.

    Returns the new probabilities and, per smear, ``shares`` (class -> share), ``cells``,
    ``iterations`` and ``collapsed`` (the classes whose share fell below :data:`PRIOR_COLLAPSED`:
    that smear will hardly ever be given them, whatever its cells). A group of fewer than
    :data:`PRIOR_MIN_CELLS` cells raises :class:`PredictionsError`.
    """
    smears = pd.Series(list(smears), dtype=object).fillna("").astype(str).to_numpy()
    out = np.array(probs, copy=True)
    estimated = {}
    for smear in pd.unique(smears):
        rows = smears == smear
        name = smear or NO_SMEAR
        if rows.sum() < PRIOR_MIN_CELLS:
            raise PredictionsError(f"--prior estimate: smear {name!r} has {int(rows.sum())} cells; at least "
                                   f"{PRIOR_MIN_CELLS} are needed to estimate its differential (give the "
                                   "cells' smear, or use --prior none / normal)")
        shares, iterations = estimate_prior(out[rows])
        out[rows] = apply_prior(out[rows], shares * len(class_names))
        estimated[name] = dict(shares={c: round(float(v), 6) for c, v in zip(class_names, shares)},
                               cells=int(rows.sum()), iterations=iterations,
                               collapsed=[c for c, v in zip(class_names, shares) if v < PRIOR_COLLAPSED])
    return out, estimated


# ----------------------------------------------------------------------------- building and writing


def is_six_class(class_names: Sequence[str]) -> bool:
    """True when the model predicts exactly the paper's six classes (in any order)."""
    return sorted(class_names) == sorted(CLASSES6)


def predictions_table(cells: pd.DataFrame, probs: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """The predictions table of ``cells`` given probabilities ``(N, C)`` over ``class_names``.

    Six-class models: :data:`SIX_COLUMNS` (probabilities in Table 1 order,
    ``pred5`` merges Band and Segment into Neutrophil). Other models:
    ``path, smear, label, pred, prob_<name>...``.
    """
    names = list(class_names)
    out = pd.DataFrame({"path": cells["path"].astype(str).values,
                        "smear": cells["smear"].fillna("").astype(str).values,
                        "label": cells["label"].fillna("").astype(str).values})
    if is_six_class(names):
        order = [names.index(c) for c in CLASSES6]
        p6 = probs[:, order]
        out["pred6"] = [CLASSES6[i] for i in p6.argmax(1)]
        out["pred5"] = classes.merge_to_five(out["pred6"])
        for j, c in enumerate(CLASSES6):
            out[PROB_PREFIX + c] = p6[:, j].astype(np.float64)
    else:
        out["pred"] = [names[i] for i in probs.argmax(1)]
        for j, c in enumerate(names):
            out[PROB_PREFIX + c] = probs[:, j].astype(np.float64)
    return out


def run_config_path(path: PathLike) -> Path:
    """The run description written beside a predictions CSV: ``pred.csv`` -> ``pred.json``."""
    return Path(path).with_suffix(".json")


def write_predictions(df: pd.DataFrame, path: PathLike, config: Optional[dict] = None, overwrite: bool = False,
                      inputs: Sequence[PathLike] = ()) -> Path:
    """Write a predictions table as CSV atomically (probabilities with 7 significant digits).

    config: the run description (e.g. :func:`wbc_nnabla.predictor.run_config`),
        written as :func:`run_config_path` beside the CSV with the CSV's
        ``predictions_sha256`` added. The two files are renamed into place
        together under a lock on their folder (:func:`wbc_nnabla.outputs.atomic_files`),
        so two runs writing the same CSV leave a CSV and a JSON of the same run;
        :func:`read_run_config` checks it.
    overwrite: replace an existing CSV (and JSON); without it FileExistsError names the file.
    inputs: files the run read (model, cell list): never replaced, even with ``overwrite``.
    """
    path = Path(path)
    targets = [path] + ([run_config_path(path)] if config is not None else [])
    for t in targets:
        outputs.check_output(t, "predict", overwrite, inputs, folder=False)
    with outputs.atomic_files(targets, overwrite=overwrite) as tmps:
        df.to_csv(tmps[0], index=False, float_format="%.7g", lineterminator="\n")
        if config is not None:
            digest = hashlib.sha256(tmps[0].read_bytes()).hexdigest()
            tmps[1].write_text(outputs.json_text(dict(config, predictions=path.name, predictions_sha256=digest)),
                               encoding="utf-8")
    return path


def read_run_config(path: PathLike) -> dict:
    """The run description beside the predictions CSV ``path``, checked to describe that CSV.

    Read under a shared lock on the folder (writers rename the pair under an
    exclusive one). Raises :class:`PredictionsError` when the JSON is missing,
    has no ``predictions_sha256``, or records another CSV than the one there.
    """
    path = Path(path)
    cfg_path = run_config_path(path)
    try:
        with outputs.folder_lock(path.parent, shared=True):
            text = cfg_path.read_text(encoding="utf-8")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError as e:
        raise PredictionsError(f"{e.filename}: no such file (a predict run writes {path.name} and "
                               f"{cfg_path.name} together)") from None
    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise PredictionsError(f"{cfg_path}: not readable JSON ({e})") from None
    recorded = cfg.get("predictions_sha256") if isinstance(cfg, dict) else None
    if recorded is None:
        raise PredictionsError(f"{cfg_path}: records no predictions_sha256; it cannot be matched to {path.name}")
    if recorded != digest:
        raise PredictionsError(f"{cfg_path} describes another {path.name} (sha256 {recorded[:12]}..., the file "
                               f"there has {digest[:12]}...); the two files are from different runs")
    return cfg


# ----------------------------------------------------------------------------- reading


def _line(i: int) -> int:
    """1-based line number in the CSV of data row ``i`` (header on line 1)."""
    return int(i) + 2


def _load_frame(source: PathOrFrame, name: Optional[str]) -> Tuple[pd.DataFrame, str, Optional[Path]]:
    """The raw table as strings, its name for messages and the folder relative image paths start from."""
    if isinstance(source, pd.DataFrame):
        return source.copy(), name or "<predictions DataFrame>", None
    path = Path(source)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise PredictionsError(f"{path}: no such predictions file") from None
    except IsADirectoryError:
        raise PredictionsError(f"{path}: is a folder; expected a predictions CSV file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise PredictionsError(f"{path}: not a readable predictions CSV ({e})") from None
    return df, name or str(path), path.resolve().parent


def _check_columns(df: pd.DataFrame, name: str) -> Dict[str, str]:
    """Map canonical column names to the frame's (case-insensitive); refuse other class sets."""
    by_lower = {str(c).strip().lower(): c for c in df.columns}
    found_probs = [str(c).strip() for c in df.columns if str(c).strip().lower().startswith(PROB_PREFIX)]
    expected = ", ".join(PROB_COLUMNS)
    if not found_probs:
        raise PredictionsError(
            f"{name}: no probability columns; expected {expected} (found columns: "
            f"{', '.join(map(str, df.columns)) or 'none'})")
    if sorted(c.lower() for c in found_probs) != sorted(c.lower() for c in PROB_COLUMNS):
        raise PredictionsError(
            f"{name}: predictions of a model with another class set: expected probability columns "
            f"{expected}; found {', '.join(found_probs)}")
    missing = [c for c in REQUIRED_COLUMNS if c.lower() not in by_lower]
    if missing:
        raise PredictionsError(
            f"{name}: missing column(s) {', '.join(missing)}; expected path, smear, label, pred6, pred5, "
            f"{expected} (found {', '.join(map(str, df.columns))})")
    return {c: by_lower[c.lower()] for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS + DOMAIN_COLUMNS
            if c.lower() in by_lower}


def _parse_labels(values: pd.Series, name: str, column: str, convert, allow_empty: bool) -> List[str]:
    """Convert each distinct spelling once (fast on 10^4 rows); errors name the first bad line."""
    out = {}
    for value in pd.unique(values):
        text = str(value).strip()
        if text == "":
            if not allow_empty:
                i = int(np.flatnonzero((values.astype(str).str.strip() == "").to_numpy())[0])
                raise PredictionsError(f"{name} line {_line(i)}, column '{column}': empty; expected one of "
                                       f"{', '.join(CLASSES6)}")
            out[value] = ""
            continue
        i = int(np.flatnonzero((values == value).to_numpy())[0])
        try:
            out[value] = convert(text, f"{name} line {_line(i)}, column '{column}'") or ""
        except classes.LabelError as e:
            raise PredictionsError(str(e)) from None
    return [out[v] for v in values]


def _parse_paths(df: pd.DataFrame, cols: Dict[str, str], name: str) -> pd.Series:
    """The stripped ``path`` column; refuses an empty path and a cell listed twice."""
    paths = df[cols["path"]].astype(str).str.strip()
    empty = np.flatnonzero((paths == "").to_numpy())
    if len(empty):
        raise PredictionsError(f"{name} line {_line(empty[0])}, column 'path': empty path")
    dup = paths.duplicated(keep=False).to_numpy()
    if dup.any():
        rows = np.flatnonzero(dup)[:2]
        raise PredictionsError(f"{name} lines {_line(rows[0])} and {_line(rows[1])}, column 'path': the same cell "
                               f"{paths.iloc[rows[0]]!r} is listed twice")
    return paths


def _parse_smears(df: pd.DataFrame, cols: Dict[str, str]) -> np.ndarray:
    """Smear per cell: :data:`ALL_SMEARS` when no cell names one, else :data:`NO_SMEAR` for the cells without."""
    smear = df[cols["smear"]].astype(str).str.strip() if "smear" in cols else pd.Series([""] * len(df))
    if (smear == "").all():
        return pd.Series([ALL_SMEARS] * len(df)).to_numpy()
    return smear.where(smear != "", NO_SMEAR).to_numpy()


def _parse_pred5(df: pd.DataFrame, cols: Dict[str, str], name: str, out: pd.DataFrame) -> None:
    """Refuse a given ``pred5`` that is not the five-class view of ``pred6`` (empty values are allowed)."""
    given = _parse_labels(df[cols["pred5"]], name, "pred5", classes.to_class5, True)
    bad = np.flatnonzero([g != "" and g != p for g, p in zip(given, out["pred5"])])
    if len(bad):
        i = bad[0]
        raise PredictionsError(
            f"{name} line {_line(i)}, column 'pred5': {given[i]!r} disagrees with pred6 "
            f"{out['pred6'].iloc[i]!r} (expected {out['pred5'].iloc[i]!r})")


def _parse_probs(df: pd.DataFrame, cols: Dict[str, str], name: str) -> np.ndarray:
    """The ``(N, 6)`` float64 probability matrix; every value finite in [0, 1], rows summing to 1."""
    probs = np.empty((len(df), len(PROB_COLUMNS)), dtype=np.float64)
    for j, c in enumerate(PROB_COLUMNS):
        col = pd.to_numeric(df[cols[c]], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(col) | (col < -1e-6) | (col > 1 + 1e-6))
        if len(bad):
            i = bad[0]
            raise PredictionsError(f"{name} line {_line(i)}, column '{c}': {df[cols[c]].iloc[i]!r} is not a "
                                   f"probability in [0, 1]")
        probs[:, j] = np.clip(col, 0.0, 1.0)
    sums = probs.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > PROB_SUM_TOL)
    if len(bad):
        i = bad[0]
        raise PredictionsError(f"{name} line {_line(i)}: probabilities prob_* sum to {sums[i]:.4f}, "
                               f"expected 1 (softmax output, tolerance {PROB_SUM_TOL})")
    return probs


def _check_pred6_is_argmax(out: pd.DataFrame, probs: np.ndarray, name: str) -> None:
    """Refuse a row whose ``pred6`` is not among its highest probabilities (ties within :data:`PRED_TIE_TOL`).

    A ``pred6`` that contradicts the ``prob_*`` columns leaves no way to know
    which one the model said: scoring one of them silently would be a guess.
    """
    idx = np.array([classes.INDEX6[c] for c in out["pred6"]], dtype=np.int64)
    given = probs[np.arange(len(probs)), idx]
    top = probs.max(axis=1)
    bad = np.flatnonzero(given < top - PRED_TIE_TOL)
    if len(bad):
        i = int(bad[0])
        best = CLASSES6[int(probs[i].argmax())]
        raise PredictionsError(
            f"{name} line {_line(i)}: pred6 {out['pred6'].iat[i]!r} (prob_{out['pred6'].iat[i]} {given[i]:.6g}) "
            f"is not the class of highest probability (prob_{best} {top[i]:.6g}); pred6 must be the argmax of "
            f"the prob_* columns ({len(bad)} of {len(probs)} rows disagree)")


def _parse_domain(df: pd.DataFrame, cols: Dict[str, str], name: str, out: pd.DataFrame) -> None:
    """Copy the domain-check columns, checked: both or neither, distance finite >= 0, flag 0/1 (or true/false)."""
    have = [c for c in DOMAIN_COLUMNS if c in cols]
    if not have:
        return
    if len(have) != len(DOMAIN_COLUMNS):
        missing = [c for c in DOMAIN_COLUMNS if c not in cols]
        raise PredictionsError(f"{name}: has column {have[0]} but not {missing[0]}; the domain-shift columns "
                               f"{', '.join(DOMAIN_COLUMNS)} come together")
    dist = pd.to_numeric(df[cols["domain_distance"]], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(dist) | (dist < 0))
    if len(bad):
        i = bad[0]
        raise PredictionsError(f"{name} line {_line(i)}, column 'domain_distance': "
                               f"{df[cols['domain_distance']].iloc[i]!r} is not a distance (a number >= 0)")
    flag_map = {"0": False, "1": True, "false": False, "true": True}
    text = df[cols["outside_domain"]].astype(str).str.strip().str.lower()
    bad = np.flatnonzero(~text.isin(list(flag_map)).to_numpy())
    if len(bad):
        i = bad[0]
        raise PredictionsError(f"{name} line {_line(i)}, column 'outside_domain': "
                               f"{df[cols['outside_domain']].iloc[i]!r}; expected 0 or 1")
    out["domain_distance"] = dist
    out["outside_domain"] = text.map(flag_map).to_numpy(dtype=bool)


# ----------------------------------------------------------------------------- calibration cells

#: Key of the calibration cells in a model's description and in a predict run's JSON: the training
#: run's validation cells as the exported model predicted them (:func:`calibration_record`). They
#: let a lab set the judgement-pending cut-off where the model was trained, without labels of its
#: own (``score --pending-threshold model``; docs/scoring.md, "A cut-off that travels with the model").
CALIBRATION_KEY = "calibration"
#: Decimals the calibration probabilities are stored with (a few kB in the model for 480 cells).
CALIBRATION_DECIMALS = 5


def calibration_record(labels: Sequence[int], probs: np.ndarray, class_names: Sequence[str], source: str) -> dict:
    """The calibration cells of a model: ``labels`` ``(N,)`` (indices into ``class_names``) and the
    model's probabilities ``probs`` ``(N, C)`` of the same cells; ``source`` says which cells
    (e.g. the dataset's ``valid.csv`` and the epoch exported). Checked by :func:`read_calibration`."""
    record = {"source": str(source), "class_names": list(class_names), "labels": [int(v) for v in labels],
              "probs": np.round(np.asarray(probs, np.float64), CALIBRATION_DECIMALS).tolist()}
    read_calibration(record, "calibration_record")
    return record


def read_calibration(record, where: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """``(labels (N,), probs (N, C), class_names)`` of a :func:`calibration_record`, checked.

    Raises :class:`PredictionsError` naming ``where`` (the file it came from) when the record is
    missing or malformed: labels out of range, rows that are not probabilities, no cells.
    """
    if not isinstance(record, dict) or not {"class_names", "labels", "probs"} <= set(record):
        raise PredictionsError(f"{where}: no calibration cells (class_names, labels, probs)")
    names = [str(c) for c in record["class_names"]]
    try:
        labels = np.asarray(record["labels"], dtype=np.int64).reshape(-1)
        probs = np.asarray(record["probs"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PredictionsError(f"{where}: calibration cells are not numbers ({e})") from None
    if len(labels) == 0 or probs.shape != (len(labels), len(names)):
        raise PredictionsError(f"{where}: calibration cells: {len(labels)} labels but probabilities of shape "
                               f"{probs.shape}; expected ({len(labels)}, {len(names)})")
    if labels.min() < 0 or labels.max() >= len(names):
        raise PredictionsError(f"{where}: calibration labels must be indices into {names}")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(probs.sum(1) - 1).max() > PROB_SUM_TOL:
        raise PredictionsError(f"{where}: calibration probabilities must be >= 0 and sum to 1 per cell")
    return labels, probs, names


def five_class_probs(probs6: np.ndarray) -> np.ndarray:
    """Merge ``(N, 6)`` six-class probabilities to ``(N, 5)`` (Band + Segment = Neutrophil)."""
    p = np.asarray(probs6, dtype=np.float64)
    band, seg = classes.INDEX6["Band"], classes.INDEX6["Segment"]
    keep = [classes.INDEX6[c] for c in CLASSES5[:-1]]
    return np.concatenate([p[:, keep], (p[:, band] + p[:, seg])[:, None]], axis=1)


def read_predictions(source: PathOrFrame, name: Optional[str] = None) -> pd.DataFrame:
    """Read and check a predictions CSV (or DataFrame) of the six-class model.

    Columns (case-insensitive): ``path``, ``pred6`` and ``prob_<class>`` for
    the six classes are required; ``smear``, ``label`` (human label: a six-class
    name, ``Neutrophil`` when only the five-class label is known, or empty) and
    ``pred5`` are optional. Any accepted synonym is read (see
    :mod:`wbc_nnabla.classes`). ``pred6`` must be a class of highest
    probability in its row (ties within :data:`PRED_TIE_TOL` allowed).

    Returns one row per cell with columns ``path, smear, label, true6, true5,
    pred6, pred5, prob_*`` (floats), ``top6``, ``top5`` (highest six- and
    five-class probability), ``domain_distance`` (float) and ``outside_domain``
    (bool) when the file has the domain-shift columns (:data:`DOMAIN_COLUMNS`,
    optional: older files lack them), and ``line`` (line in the file). ``true6`` is empty
    for unlabeled and ``Neutrophil``-only cells, ``true5`` for unlabeled cells.
    Cells without smear go to smear ``(all)`` when no cell names one, else to
    ``(no smear)``. ``attrs``: ``name`` (the file, for messages) and
    ``base_dir`` (its folder, which relative image paths start from).

    Raises :class:`PredictionsError` naming the file, line and column.
    """
    df, name, base_dir = _load_frame(source, name)
    if len(df) == 0:
        raise PredictionsError(f"{name}: no cells (the file has a header but no rows)")
    cols = _check_columns(df, name)
    df = df.reset_index(drop=True)
    out = pd.DataFrame({"path": _parse_paths(df, cols, name)})
    out["smear"] = _parse_smears(df, cols)
    label = df[cols["label"]].astype(str) if "label" in cols else pd.Series([""] * len(df))
    out["label"] = label.str.strip().to_numpy()
    out["true6"] = _parse_labels(label, name, "label",
                                 lambda t, s: classes.to_class6(t, s, allow_neutrophil=True), True)
    out["true5"] = _parse_labels(label, name, "label", classes.to_class5, True)
    out["pred6"] = _parse_labels(df[cols["pred6"]], name, "pred6", classes.to_class6, False)
    out["pred5"] = classes.merge_to_five(out["pred6"])
    if "pred5" in cols:
        _parse_pred5(df, cols, name, out)
    probs = _parse_probs(df, cols, name)
    _check_pred6_is_argmax(out, probs, name)
    for j, c in enumerate(PROB_COLUMNS):
        out[c] = probs[:, j]
    out["top6"] = probs.max(axis=1)
    out["top5"] = five_class_probs(probs).max(axis=1)
    _parse_domain(df, cols, name, out)
    out["line"] = np.arange(len(df)) + 2
    out.attrs["name"] = name
    out.attrs["base_dir"] = str(base_dir) if base_dir else None
    return out
