"""Synthetic predictions for tests and benchmarks (not part of the library).

Benchmarks import it with the repository root on ``sys.path``::

    sys.path.insert(0, str(ROOT))
    from tests.helpers import predictions_from_confusion
"""
import numpy as np
import pandas as pd

from wbc_nnabla import classes
from wbc_nnabla.classes import CLASSES6
from wbc_nnabla.predictions import PROB_COLUMNS


def predictions_from_confusion(counts6, n_smears: int = 57, seed: int = 0,
                               path_prefix: str = "cells/") -> pd.DataFrame:
    """A predictions table whose pooled six-class confusion equals ``counts6`` (for tests and benchmarks).

    counts6: ``(6, 6)`` integer counts, human rows x AI columns in Table 1 order.
    Cells are shuffled (``seed``) and split into ``n_smears`` smears of nearly
    equal size named ``S01``...; each gets a softmax-like probability row whose
    top class is its AI class, drawn higher for correct calls (0.55-1.0) than
    for wrong ones (0.4-0.9), so cut-offs behave as with a real model.
    Columns are those of a predictions CSV (``path`` = ``<prefix>cell_<n>.png``).
    """
    counts6 = np.asarray(counts6, dtype=np.int64)
    if counts6.shape != (6, 6) or (counts6 < 0).any():
        raise ValueError(f"counts6 must be a (6, 6) array of non-negative counts, got shape {counts6.shape}")
    rng = np.random.default_rng(seed)
    ti, pi = np.nonzero(counts6)
    true = np.repeat(ti, counts6[ti, pi])
    pred = np.repeat(pi, counts6[ti, pi])
    order = rng.permutation(len(true))
    true, pred = true[order], pred[order]
    n = len(true)
    top = np.where(true == pred, rng.uniform(0.55, 1.0, n), rng.uniform(0.4, 0.9, n))
    # each other class gets at most 0.6 * (1 - top) < top (as top > 0.375): the top class stays on top
    rest = (0.5 * rng.dirichlet(np.ones(5), n) + 0.1) * (1.0 - top)[:, None]
    probs = np.zeros((n, 6))
    for i in range(6):
        others = [j for j in range(6) if j != i]
        m = pred == i
        probs[np.ix_(m, others)] = rest[m]
        probs[m, i] = top[m]
    smear = np.empty(n, dtype=object)
    for k, idx in enumerate(np.array_split(np.arange(n), max(1, int(n_smears)))):
        smear[idx] = f"S{k + 1:02d}"
    names = np.array(CLASSES6, dtype=object)
    df = pd.DataFrame({"path": [f"{path_prefix}cell_{i:05d}.png" for i in range(n)], "smear": smear,
                       "label": names[true], "pred6": names[pred],
                       "pred5": classes.merge_to_five(names[pred])})
    for j, c in enumerate(PROB_COLUMNS):
        df[c] = probs[:, j]
    return df
