"""Cells a source lists twice: the same path, a byte-identical copy, or the same photo re-encoded.

A cell listed twice counts twice and can fall on both sides of a train/valid split (a leak
that flatters validation). :func:`drop_duplicates` refuses (or with ``--dedupe`` drops) repeats
of one path and, with ``by_content``, byte-identical copies under other names
(:func:`content_keys`); :func:`reencoded_pairs` finds the same photo saved under one name in
two formats (``a.jpg`` and a re-encoded ``a.png``), which ``build-dataset`` refuses.
docs/datasets.md, "Repeated cells". Split from :mod:`~wbc_nnabla.fileio`, which re-exports these.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pandas as pd

from .errors import SourceError
from .images import file_sha256

#: Side (pixels) of the grey thumbnail two photos are compared on (:func:`thumbnail`).
THUMBNAIL_SIDE = 32
#: Two same-named photos whose thumbnails differ by at most this mean absolute grey level are
#: one photo saved twice: re-encoding 60 pbc6 cells as JPEG at quality 75 and 90 moved their
#: thumbnails by at most 0.13; two different pbc6 cells differ by at least 17 (44,850 pairs).
SAME_PHOTO_LEVELS = 2.0


def content_keys(paths: Sequence[str]) -> List[str]:
    """One key per path, equal for files with the same bytes: ``sha256:...`` or the path itself.

    Only files whose size another file shares are read and hashed (a file of
    unique size cannot be a copy); a path that cannot be read keeps its own
    path as key (the stage that opens it reports it).
    """
    sizes = []
    for p in paths:
        try:
            sizes.append(os.path.getsize(p))
        except OSError:
            sizes.append(None)
    counts = pd.Series([s for s in sizes if s is not None]).value_counts()
    keys = []
    for p, size in zip(paths, sizes):
        if size is None or counts.get(size, 0) < 2:
            keys.append(str(p))
            continue
        try:
            keys.append("sha256:" + file_sha256(p))
        except OSError:
            keys.append(str(p))
    return keys


def copy_groups(table: pd.DataFrame) -> List[List[int]]:
    """Rows (positions in ``table``) whose files are byte-identical copies under different paths.

    One list per image held by more than one path, rows in table order; the
    same path listed twice is not a copy (:func:`drop_duplicates` reports it).
    """
    paths = table["path"].astype(str).tolist()
    groups: dict = {}
    for i, key in enumerate(content_keys(paths)):
        groups.setdefault(key, []).append(i)
    return [rows for rows in groups.values() if len({paths[i] for i in rows}) > 1]


def _same_cell(a: pd.Series, b: pd.Series) -> str:
    """How two rows repeat one cell, for an error message."""
    if a["path"] == b["path"]:
        return f"list the same cell {a['path']}"
    return f"list byte-identical copies of one image ({a['path']} and {b['path']})"


def drop_duplicates(table: pd.DataFrame, dedupe: bool = False,
                    by_content: bool = False, dedupe_flag: Optional[str] = "--dedupe") -> pd.DataFrame:
    """``table`` without repeated cells (same resolved ``path`` and centre), or :class:`SourceError`.

    With ``by_content`` the image is identified by its bytes (:func:`content_keys`),
    so a copy of a file under another name is a repeat as well. Repeats with
    another label or smear are always an error naming both rows; exact repeats
    are an error unless ``dedupe``, which keeps the first and records the count
    dropped in ``attrs["duplicates_dropped"]``. The messages name both rows;
    ``dedupe_flag`` is the flag they suggest (None: the caller has none).
    """
    image = pd.Series(content_keys(table["path"].astype(str).tolist()) if by_content else table["path"].astype(str),
                      index=table.index)
    key = image + "|" + table["x"].fillna(-1).astype(str) + "|" + table["y"].fillna(-1).astype(str)
    dup = key.duplicated(keep=False)
    out = table
    if dup.any():
        first = {}
        for i in np.flatnonzero(dup.to_numpy()):
            j = first.setdefault(key.iat[i], i)
            if j == i:
                continue
            a, b = table.iloc[j], table.iloc[i]
            if (a["label"], a["smear"]) != (b["label"], b["smear"]):
                raise SourceError(f"{a['source']} and {b['source']} {_same_cell(a, b)} with "
                                  f"different labels/smears ({a['label'] or 'unlabeled'}/{a['smear'] or '-'} vs "
                                  f"{b['label'] or 'unlabeled'}/{b['smear'] or '-'}); a cell has one label")
            if not dedupe:
                fix = f"remove the repeat or pass {dedupe_flag} to drop exact repeats" if dedupe_flag \
                    else "remove the repeat"
                raise SourceError(f"{a['source']} and {b['source']} {_same_cell(a, b)} twice: a repeated "
                                  f"cell counts twice and can fall on both sides of a split; {fix}")
        out = table[~key.duplicated(keep="first")].reset_index(drop=True)
    out.attrs["duplicates_dropped"] = int(len(table) - len(out))
    return out


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """Grey thumbnail float32 ``(THUMBNAIL_SIDE, THUMBNAIL_SIDE)`` of an RGB uint8 image (area-reduced)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (THUMBNAIL_SIDE, THUMBNAIL_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)


def reencoded_pairs(thumbs: Dict[str, np.ndarray]) -> List[Tuple[str, str]]:
    """Pairs of different files that are one photo saved twice under one name: ``[(path_a, path_b)]``.

    thumbs: ``{path: thumbnail(image)}``. Two files are paired when their names without the
    suffix are equal (case aside; ``a.jpg`` and ``a.png``, in any folders) and their
    thumbnails differ by at most :data:`SAME_PHOTO_LEVELS` on average. Only files sharing a
    name are compared (linear time): a photo renamed as well as re-encoded is not found (a
    search over all pairs would be quadratic in the cells); byte-identical copies are
    :func:`content_keys`' job.
    """
    by_stem: Dict[str, List[str]] = {}
    for p in thumbs:
        by_stem.setdefault(Path(p).stem.lower(), []).append(p)
    pairs = []
    for paths in by_stem.values():
        for i, a in enumerate(paths):
            pairs += [(a, b) for b in paths[i + 1:]
                      if a != b and float(np.abs(thumbs[a] - thumbs[b]).mean()) <= SAME_PHOTO_LEVELS]
    return pairs
