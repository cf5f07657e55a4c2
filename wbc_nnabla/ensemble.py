"""Ensemble of models: one predictions CSV from several models' predictions CSVs of the same cells.

A stage between inference and scoring (predictions CSVs in, a predictions CSV
out): each cell's class probabilities are averaged over the models and the
class of highest mean probability is its prediction. Models trained with other
seeds disagree on another lab's cells far more than on their own (the seed
spread of docs/research/cross_site_log.md); the mean of their probabilities is steadier than
any one of them. nnabla-free, like :mod:`wbc_nnabla.predictions`.

    wbc-nnabla predict seed0.nnp cells/ p0.csv
    wbc-nnabla predict seed1.nnp cells/ p1.csv
    wbc-nnabla ensemble p0.csv p1.csv ensemble.csv
    wbc-nnabla score ensemble.csv report/

Models that see one cell in two renderings -- the paper's Model A on the cell with its
background removed (dataset ①, section II.3), Model B on the cell as photographed -- predict two
different image files of the same cell; ``--match source`` pairs them through the
dataset's manifest (:func:`source_keys`):

    wbc-nnabla build-dataset cells/ cells_rm --inference --background remove
    wbc-nnabla predict model_A.nnp cells_rm/cells.csv pA.csv
    wbc-nnabla predict model_B.nnp cells/ pB.csv
    wbc-nnabla ensemble pB.csv pA.csv AB.csv --match source

Not in the paper (its discussion asks for deeper networks, not several); a
deviation documented in docs/inference.md.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import datasets, outputs
from .errors import InputError, PathLike
from .classes import CLASSES6
from .predictions import (ALL_SMEARS, NO_SMEAR, PROB_COLUMNS, PredictionsError, predictions_table,
                          read_predictions, read_run_config, run_config_path, write_predictions)

#: Fewest predictions CSVs an ensemble takes (one model is not an ensemble).
MIN_MEMBERS = 2
#: How members' rows are paired (``ensemble --match``): by the image file each row names, or by
#: the source cell it was made from (:func:`source_keys`).
MATCHES = ("path", "source")
#: The orientation of an image used as it is (a row that is not a dataset image).
AS_IS = datasets.DIHEDRAL_NAMES[0]


def _member_config(path: Path) -> Optional[dict]:
    """The run description beside a member CSV, or None when the CSV has none (another tool wrote it)."""
    if not run_config_path(path).exists():
        return None
    return read_run_config(path)


def _sha256(path: Path, config: Optional[dict]) -> str:
    """The member CSV's sha256: the one its run description records (checked against the file by
    :func:`~wbc_nnabla.predictions.read_run_config`), else hashed here."""
    return config["predictions_sha256"] if config else hashlib.sha256(path.read_bytes()).hexdigest()


def _prior_text(prior) -> str:
    """``none`` or ``Class=share,...`` as ``predict --prior`` takes it."""
    return ",".join(f"{c}={v:g}" for c, v in prior.items()) if isinstance(prior, dict) else str(prior)


def _check_same_prior(configs: Sequence[Optional[dict]], paths: Sequence[Path]) -> None:
    """Refuse members predicted with different class priors (``predict --prior``): their mean mixes two questions."""
    known = [(p, c.get("prior", "none")) for p, c in zip(paths, configs) if c is not None]
    for p, prior in known[1:]:
        if prior != known[0][1]:
            raise PredictionsError(f"{p}: predicted with --prior {_prior_text(prior)}, but {known[0][0]} with "
                                   f"--prior {_prior_text(known[0][1])}; predict every member with the same --prior")


def _dataset_of(image_folder: Path) -> Optional[Path]:
    """The :func:`~wbc_nnabla.datasets.build_dataset` folder ``OUT`` of an image folder ``OUT/images/CLASS``, or None."""
    out = image_folder.parent.parent
    return out if image_folder.parent.name == "images" and datasets.is_dataset_folder(out) else None


def source_keys(table: pd.DataFrame, name: str) -> pd.Series:
    """Each row's source cell, ``SOURCE_IMAGE (TRANSFORM)``, for ``--match source``.

    table: a member read by :func:`~wbc_nnabla.predictions.read_predictions`; name: its file, for
    messages. A row whose image lies in a :func:`~wbc_nnabla.datasets.build_dataset` folder maps
    through that folder's manifest to the image it was cut from and its dihedral turn; any other
    row is its own source, as it is (:data:`AS_IS`). Raises
    :class:`~wbc_nnabla.predictions.PredictionsError` naming the file and line when a dataset image
    is not in its manifest or two rows come from one source and turn (a field with several cells,
    an identical repeat): such members can only be matched by path.
    """
    paths = table["path"].reset_index(drop=True)
    keys = paths + f" ({AS_IS})"
    parents = [str(Path(p).parent) for p in paths]
    dataset = {d: _dataset_of(Path(d)) for d in set(parents)}
    row_dataset = [dataset[d] for d in parents]
    for folder in sorted({f for f in dataset.values() if f is not None}):
        m = datasets.read_manifest(folder)
        lookup = dict(zip(m["image_path"], m["source_path"] + " (" + m["transform"] + ")"))
        inside = np.flatnonzero([f == folder for f in row_dataset])
        found = paths.iloc[inside].map(lookup)
        if found.isna().any():
            i = inside[int(np.flatnonzero(found.isna())[0])]
            raise PredictionsError(f"{name} line {table['line'].iat[i]}: cell {paths.iat[i]!r} is not in "
                                   f"{folder / 'manifest.csv'}; --match source needs the manifest of the "
                                   f"dataset that made the image")
        keys.iloc[inside] = found.to_numpy()
    twice = keys.duplicated(keep=False)
    if twice.any():
        i, j = np.flatnonzero(twice & (keys == keys[twice].iat[0]))[:2]
        raise PredictionsError(f"{name} lines {table['line'].iat[i]} and {table['line'].iat[j]}: both come from "
                               f"{keys.iat[i]}; --match source needs one cell per source image and turn "
                               f"(match these members by path)")
    return keys


def _aligned(member: pd.DataFrame, keys: pd.Series, first: pd.DataFrame, first_keys: pd.Series,
             name: str, first_name: str) -> pd.DataFrame:
    """``member``'s rows in the order of ``first``'s cells, each row's cell named by ``keys``
    (``first_keys`` for ``first``); refuses another cell set or other labels."""
    at = pd.Series(np.arange(len(member)), index=pd.Index(keys))
    missing = np.flatnonzero(~first_keys.isin(at.index))
    if len(missing):
        raise PredictionsError(f"{name}: has no row for cell {first_keys.iat[missing[0]]!r} "
                               f"({first_name} line {first['line'].iat[missing[0]]}); every member must "
                               f"predict the same cells")
    extra = np.flatnonzero(~keys.isin(first_keys))
    if len(extra):
        raise PredictionsError(f"{name} line {member['line'].iat[extra[0]]}: cell {keys.iat[extra[0]]!r} "
                               f"is not in {first_name}; every member must predict the same cells")
    rows = member.iloc[at.loc[first_keys].to_numpy()].reset_index(drop=True)
    differ = np.flatnonzero((rows["true6"].to_numpy() != first["true6"].to_numpy())
                            | (rows["true5"].to_numpy() != first["true5"].to_numpy()))
    if len(differ):
        i = differ[0]
        raise PredictionsError(f"{name} line {rows['line'].iat[i]}: label {rows['label'].iat[i]!r} of cell "
                               f"{first_keys.iat[i]!r} differs from {first_name}'s {first['label'].iat[i]!r}")
    return rows


def combine(members: Sequence[pd.DataFrame], names: Sequence[str],
            keys: Optional[Sequence[pd.Series]] = None) -> pd.DataFrame:
    """The ensemble's predictions table of tables read by :func:`wbc_nnabla.predictions.read_predictions`.

    members: at least :data:`MIN_MEMBERS` tables of the same cells (any row order; the first's order and
        paths are kept) with the same labels; names: their files, for messages; keys: each member's cell
        per row (:func:`source_keys`), default its ``path``.
    Returns the :data:`wbc_nnabla.predictions.SIX_COLUMNS` table of the mean probabilities, its
    ``pred6``/``pred5`` their argmax. When every member has the domain-shift columns the ensemble
    has them too: a cell is outside the training domain when any member says so, at the largest
    member distance (members may be trained on different cells).
    """
    if len(members) < MIN_MEMBERS:
        raise PredictionsError(f"an ensemble needs at least {MIN_MEMBERS} predictions files, got {len(members)}")
    keys = list(keys) if keys is not None else [m["path"].reset_index(drop=True) for m in members]
    first = members[0]
    rows = [first] + [_aligned(m, k, first, keys[0], n, names[0])
                      for m, k, n in zip(members[1:], keys[1:], names[1:])]
    probs = np.mean([r[list(PROB_COLUMNS)].to_numpy(np.float64) for r in rows], axis=0)
    smear = first["smear"].where(~first["smear"].isin([ALL_SMEARS, NO_SMEAR]), "")
    out = predictions_table(pd.DataFrame({"path": first["path"], "smear": smear, "label": first["label"]}),
                            probs, CLASSES6)
    if all("domain_distance" in r.columns for r in rows):
        out["domain_distance"] = np.max([r["domain_distance"].to_numpy() for r in rows], axis=0)
        out["outside_domain"] = np.any([r["outside_domain"].to_numpy() for r in rows], axis=0).astype(np.int64)
    return out


def ensemble(members: Sequence[PathLike], out: PathLike, overwrite: bool = False,
             match: str = "path") -> pd.DataFrame:
    """Write ``out``, the ensemble of the predictions CSVs ``members`` (:func:`combine`), and its ``.json``.

    Every member is read and checked (:func:`~wbc_nnabla.predictions.read_predictions`) and must
    list the same cells with the same labels: the same image files (``match="path"``), or images
    made from the same source cells (``match="source"``, :func:`source_keys`; the ensemble keeps
    the first member's paths). Members whose run description records a class prior must record
    the same one. The ``.json`` beside ``out`` lists each member with its
    sha256, model and prior. Members are never replaced, even with ``overwrite``.
    Raises :class:`~wbc_nnabla.predictions.PredictionsError` naming the file and line; nothing is
    written then.
    """
    paths = [Path(p) for p in members]
    out = Path(out)
    if match not in MATCHES:
        raise PredictionsError(f"match must be one of {', '.join(MATCHES)}, got {match!r}")
    if out.suffix.lower() != ".csv":
        raise PredictionsError(f"{out}: the ensemble's predictions file must end in .csv")
    seen = {}
    for p in paths:
        if p.resolve() in seen:
            raise PredictionsError(f"{p}: given twice (as {seen[p.resolve()]}); each member counts once")
        seen[p.resolve()] = p
    for target in (out, run_config_path(out)):
        outputs.check_output(target, "ensemble", overwrite, paths, folder=False)
    tables = [read_predictions(p) for p in paths]
    configs = [_member_config(p) for p in paths]
    _check_same_prior(configs, paths)
    keys = None
    if match == "source":
        try:
            keys = [source_keys(t, str(p)) for t, p in zip(tables, paths)]
        except InputError as e:
            raise PredictionsError(str(e)) from None
    df = combine(tables, [str(p) for p in paths], keys)
    config = dict(stage="ensemble", n_cells=len(df), environment=outputs.environment(), match=match,
                  prior=next((c.get("prior", "none") for c in configs if c), "unknown"),
                  members=[dict(predictions=str(p), sha256=_sha256(p, c),
                                model=c.get("model") if c else None, tta=c.get("tta") if c else None)
                           for p, c in zip(paths, configs)])
    write_predictions(df, out, config=config, overwrite=overwrite, inputs=paths)
    return df


__all__ = ["AS_IS", "MATCHES", "MIN_MEMBERS", "combine", "ensemble", "source_keys"]
