"""The dataset plan of section II.3 of Sasaki et al. (2020): dihedral balancing and the leak-free split.

Pure steps of :func:`wbc_nnabla.datasets.build_dataset` (no files): the eight dihedral variants
of a square (:func:`dihedral`), equal images per class (:func:`class_targets`,
:func:`source_variants`, :func:`plan_variants`), the train/valid split by source cell and smear
(:func:`split_cells`) and the variants of each cell (:func:`assign_variants`). Split from
:mod:`~wbc_nnabla.datasets`, which re-exports every name here. docs/datasets.md.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence

import numpy as np
import pandas as pd

from . import classes
from .errors import InputError

#: Names of the eight dihedral variants, index k of :func:`dihedral`.
DIHEDRAL_NAMES = ("rot0", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")
SPLITS = ("train", "valid")


def dihedral(rgb: np.ndarray, k: int) -> np.ndarray:
    """Variant ``k`` (0-7) of the dihedral group of the square (section II.3 augmentation).

    k = 0..3: rotation by k x 90 degrees counter-clockwise (0 = identity);
    k = 4..7: left-right flip, then rotation by (k - 4) x 90 degrees.
    Names in :data:`DIHEDRAL_NAMES`. Works on any ``(H, W[, C])`` array and
    returns a new contiguous array (lossless: pixels are only permuted).
    """
    if not (isinstance(k, (int, np.integer)) and 0 <= int(k) < 8):
        raise InputError(f"dihedral variant k must be an integer 0-7, got {k!r}")
    a = rgb[:, ::-1] if k >= 4 else rgb
    return np.ascontiguousarray(np.rot90(a, int(k) % 4))


def class_order(names) -> List[str]:
    """Class names in Table 1 order (six classes first), any other names after, sorted."""
    names = set(names)
    known = [c for c in classes.CLASSES6 if c in names]
    return known + sorted(names - set(known))


def class_targets(total: int, names: Sequence[str] = classes.CLASSES6) -> Dict[str, int]:
    """Images per class so that the classes are equal and sum to ``total``.

    ``total // n`` each; the remainder ``total % n`` goes one image each to
    the first classes in Table 1 order (Basophil, Eosinophil, Lymph, Mono,
    Band, Segment), so 2,385 gives 398 x 3 + 397 x 3. Deterministic.
    """
    order = class_order(names)
    if total < 0:
        raise InputError(f"total must be >= 0, got {total}")
    if not order:
        return {}
    base, rem = divmod(int(total), len(order))
    return OrderedDict((c, base + (1 if i < rem else 0)) for i, c in enumerate(order))


def source_variants(n_sources: int, target: int) -> List[List[int]]:
    """Dihedral variants for each of ``n_sources`` cells of one class so the class has ``target`` images.

    Each source gets ``target // n`` or ``target // n + 1`` images (the first
    ``target % n`` sources one more), and a source's images cycle through all
    eight variants (0, 1, ..., 7, 0, ...) before any repeats. When ``target <
    n_sources`` the last sources get none (they are left unused). Returns one
    list of k per source.
    """
    if n_sources < 0 or target < 0:
        raise InputError(f"n_sources and target must be >= 0, got {n_sources}, {target}")
    if n_sources == 0:
        if target:
            raise InputError(f"cannot make {target} images from 0 source cells")
        return []
    base, extra = divmod(int(target), int(n_sources))
    return [[j % 8 for j in range(base + (1 if i < extra else 0))] for i in range(n_sources)]


def plan_variants(counts: Mapping[str, int], total: int) -> Dict[str, List[List[int]]]:
    """Dihedral variants per class and source so that the classes present are equal and sum to ``total``.

    counts: ``{class: number of source cells}``; classes with 0 cells are left
        out of the balance (and get ``[]``).

    Returns ``{class: [[k, ...] per
    source]}`` (see :func:`source_variants`); the per-class targets are those
    of :func:`class_targets` over the present classes.
    """
    present = [c for c in class_order(counts) if counts[c] > 0]
    targets = class_targets(total, present)
    plan = OrderedDict()
    for c in class_order(counts):
        plan[c] = source_variants(int(counts[c]), targets.get(c, 0)) if counts[c] > 0 else []
    return plan


def split_cells(table: pd.DataFrame, valid_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Train/valid split of source cells, stratified by class and grouped by smear.

    table: a cell table (columns ``label`` and ``smear``), one row per source
        cell *before* augmentation, so no variant of a validation cell can be in training.

    Cells with the same non-empty ``smear`` form one group (a smear
    is wholly in one split); a cell without a smear is its own group.
    Groups are visited in a seeded random order and each goes to ``valid``
    when that brings the per-class valid counts closer to ``valid_fraction``
    x the class counts (sum of absolute deviations), else to ``train``: exact
    stratification (rounded) for ungrouped cells, the best greedy
    approximation for smears. Returns an array of ``"train"``/``"valid"``.
    """
    vf = float(valid_fraction)
    if not 0.0 <= vf < 1.0:
        raise InputError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    n = len(table)
    out = np.array(["train"] * n, dtype=object)
    if n == 0 or vf == 0.0:
        return out
    labels = table["label"].astype(str).to_numpy()
    names = class_order(labels)
    col = {c: i for i, c in enumerate(names)}
    target = np.array([vf * np.sum(labels == c) for c in names], float)
    smears = table["smear"].fillna("").astype(str).to_numpy() if "smear" in table else np.array([""] * n)
    groups: "OrderedDict[str, List[int]]" = OrderedDict()
    for i in range(n):
        key = f"smear:{smears[i]}" if smears[i] != "" else f"cell:{i}"
        groups.setdefault(key, []).append(i)
    keys = list(groups)
    valid = np.zeros(len(names), float)
    for gi in np.random.RandomState(seed).permutation(len(keys)):
        idx = groups[keys[gi]]
        g = np.bincount([col[labels[i]] for i in idx], minlength=len(names))
        if np.abs(valid + g - target).sum() < np.abs(valid - target).sum():
            valid += g
            out[idx] = "valid"
    return out


def assign_variants(cells_df: pd.DataFrame, split: np.ndarray, total: int, valid_fraction: float,
            seed: int, report: dict) -> List[List[int]]:
    """Variants per cell (one list of k per row): each split balanced by :func:`plan_variants`."""
    variants: List[List[int]] = [[] for _ in range(len(cells_df))]
    has_valid = bool((split == "valid").any())
    split_total = {"valid": int(round(total * valid_fraction)) if has_valid else 0}
    split_total["train"] = total - split_total["valid"]
    if valid_fraction > 0 and not has_valid:
        report["warnings"].append(f"valid fraction {valid_fraction} but no source cell went to validation "
                                  f"(classes or smears too few): no valid.csv")
    labels = cells_df["label"].to_numpy()
    all_classes = class_order(labels)
    rng = np.random.RandomState(seed)
    for s in SPLITS:
        idx = np.nonzero(split == s)[0]
        counts = OrderedDict((c, int(np.sum(labels[idx] == c))) for c in all_classes)
        if split_total[s] and not any(counts.values()):
            report["warnings"].append(f"{s}: no source cells (all went to the other split); "
                                      f"{split_total[s]} planned {s} images were not made")
            continue
        missing = [c for c, n in counts.items() if n == 0]
        if missing and split_total[s]:
            report["warnings"].append(
                f"{s}: no source cell of {', '.join(missing)}; the {s} images are balanced over the "
                f"other classes only")
        plan = plan_variants(counts, split_total[s])
        for c in all_classes:
            members = idx[labels[idx] == c]
            # which sources get one extra variant (or are left unused) is a seeded choice
            for i, v in zip(rng.permutation(members), plan[c]):
                variants[i] = v
    return variants
