"""Which cells a reviewer sees first: the AI's groups, an active-learning order, or a seeded random one.

``ai`` (the review's default): the AI's classes in Table 1 order with the pending cells first, each
group in the predictions' order (the page groups the cells itself; no rank is needed).

``active``: the order to label a new lab's cells in for a few-shot ``finetune``, from the
predictions' probabilities alone (no network features, so it needs no model). The rule, fixed in
``docs/review.md`` before it was measured:

1. five-class probabilities (Band + Segment = Neutrophil); each cell's AI call ``c`` (the highest)
   and margin ``m`` = highest minus second-highest probability;
2. one group per call, each sorted by ``m`` ascending (the least sure call first; ties in file order);
3. round robin over the groups in five-class Table 1 order (Basophil, Eosinophil, Lymph, Mono,
   Neutrophil): round ``k`` takes the ``k``-th cell of every group that still has one;
4. a cell whose six probabilities equal an earlier cell's (to 6 decimals: a copy of one image) goes
   to the end.

Why: a lab's labels are most informative where the model is unsure (margin sampling), and a few
labels must cover every class the model calls, rare ones included (the round robin: uniform over
the calls, which the lab has, rather than over the true classes, which it does not).

``random``: a seeded permutation (the baseline the active order is measured against).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..classes import CLASSES5
from ..predictions import PROB_COLUMNS, five_class_probs
from .db import ReviewError

ORDERS = ("ai", "active", "random")
#: Decimals two probability rows must agree to for the second to count as a copy (``active``, step 4).
COPY_DECIMALS = 6


def check_order(order: str) -> str:
    """``order`` if it is one of :data:`ORDERS`, else :class:`ReviewError`."""
    if order not in ORDERS:
        raise ReviewError(f"order {order!r}: expected one of {', '.join(ORDERS)}")
    return order


def active_order(probs6: np.ndarray) -> np.ndarray:
    """Row indices of ``probs6`` ``(N, 6)`` (Table 1 order) in the ``active`` order (module docstring)."""
    p5 = five_class_probs(np.asarray(probs6, np.float64))
    top2 = np.sort(p5, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    call = p5.argmax(axis=1)
    groups = [list(np.flatnonzero(call == k)[np.argsort(margin[call == k], kind="stable")])
              for k in range(len(CLASSES5))]
    out = []
    for k in range(max((len(g) for g in groups), default=0)):
        out += [g[k] for g in groups if k < len(g)]
    keys = [tuple(np.round(probs6[i], COPY_DECIMALS)) for i in out]
    seen, first, copies = set(), [], []
    for i, key in zip(out, keys):
        (copies if key in seen else first).append(i)
        seen.add(key)
    return np.asarray(first + copies, dtype=np.int64)


def random_order(n: int, seed: int) -> np.ndarray:
    """A seeded permutation of ``n`` rows (``np.random.RandomState(seed)``)."""
    return np.random.RandomState(seed).permutation(n).astype(np.int64)


def ranks(cells: pd.DataFrame, order: str, seed: int = 0) -> np.ndarray:
    """Rank of each row of read predictions ``cells`` (0 = first) in ``order`` over all rows given.

    ``ai``: pending cells first (column ``pending`` when present), then the AI's classes in Table 1
    order, file order inside each group.
    """
    order = check_order(order)
    n = len(cells)
    if order == "active":
        idx = active_order(cells[list(PROB_COLUMNS)].to_numpy(np.float64))
    elif order == "random":
        idx = random_order(n, seed)
    else:
        from ..classes import INDEX6
        pending = cells["pending"].to_numpy(bool) if "pending" in cells else np.zeros(n, bool)
        group = np.where(pending, -1, [INDEX6[c] for c in cells["pred6"]])
        idx = np.lexsort((np.arange(n), group))
    out = np.empty(n, np.int64)
    out[idx] = np.arange(n)
    return out


def ordered(cells: pd.DataFrame, order: str, seed: int = 0, smears: Sequence[str] = ()) -> pd.DataFrame:
    """``cells`` sorted in ``order`` with a ``rank`` column (1 = label first); only ``smears`` when given."""
    if smears:
        cells = cells[cells["smear"].isin(list(smears))]
        if cells.empty:
            raise ReviewError(f"no cell of smear(s) {', '.join(smears)}")
    out = cells.assign(rank=ranks(cells, order, seed) + 1)
    return out.sort_values("rank", kind="stable").reset_index(drop=True)
