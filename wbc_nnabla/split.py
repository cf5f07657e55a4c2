"""Stage 0 of ``reproduce``: the teacher cells and the labeled inference set, with smear ids.

The paper's inference set is 57 smears of 150-200 cells, never seen in training (section III).
:func:`split_source` holds out a seeded, class-stratified part of the labeled cells when no
inference set is given, and groups held-out cells without smear ids into pseudo-smears. nnabla-free.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from . import fileio, outputs, sampling
from .presets import Config

log = logging.getLogger(__name__)


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
    return write_split(table, held, Path(out_dir), cfg, source, inference, overwrite)


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


def write_split(table: pd.DataFrame, held: Optional[pd.DataFrame], out_dir: Path, cfg: Config, source,
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
