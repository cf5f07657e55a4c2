"""Seeded, class-stratified samples of a table's rows, independent of the table's order.

Every place that uses "some of" a dataset (the demo's held-out cells, the
images for BatchNorm re-estimation, Training Error on a subset, galleries)
draws them here, so that a file sorted by class gives the same mix of classes
as a shuffled one. nnabla-free.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import pandas as pd

from .errors import InputError
from .settings import MAX_SEED  # noqa: F401  (the one range of seeds; read here by every consumer)


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an ``int`` in ``[0, MAX_SEED]``; :class:`~wbc_nnabla.errors.InputError` naming ``what`` otherwise."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{what} must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return int(seed)


def class_quota(labels: Sequence, n: int) -> Dict[object, int]:
    """Items per class for a sample of ``n``: in proportion to the class sizes (largest remainders).

    labels: one label per row (any hashable values).

    Returns ``{label: count}`` in sorted label order; the counts add up to ``min(n, len(labels))``.
    """
    counts = pd.Series(list(labels)).value_counts().sort_index()
    n = min(int(n), int(counts.sum()))
    share = counts / counts.sum() * n
    take = np.floor(share).astype(int)
    for cls in (share - take).sort_values(ascending=False).index[: n - take.sum()]:
        take[cls] += 1
    return {k: int(v) for k, v in take.items()}


def stratified_pick(labels: Sequence, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of ``n`` items drawn per class in proportion to the class sizes.

    rng: a NumPy ``Generator`` (the caller seeds it).

    The result depends on the rows' labels and ``rng`` only through which rows hold which class, so
    reordering the rows permutes the picked set the same way.
    """
    lab = np.asarray(list(labels), dtype=object)
    picked = []
    for cls, k in class_quota(lab, n).items():
        idx = np.flatnonzero(lab == cls)
        picked.extend(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.array(picked, dtype=int))


def shuffled_sample(labels: Sequence, n: int, seed: int) -> np.ndarray:
    """Row indices of a stratified sample of ``n`` (:func:`stratified_pick`) in a seeded random order.

    The random order mixes classes within every batch drawn from the sample in
    sequence (batch statistics of a class-sorted list would each see one class).
    """
    rng = np.random.default_rng(int(seed))
    pick = stratified_pick(labels, n, rng)
    return pick[rng.permutation(len(pick))]


def derive_seed(*keys: int) -> int:
    """A 31-bit seed from (run seed, epoch, stream, ...); independent streams per key."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] % (2 ** 31 - 1))
