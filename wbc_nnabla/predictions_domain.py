"""The predictions CSV's domain-shift columns, summarised per run and per smear.

``predict`` writes two optional per-cell columns for a model that stores a domain
reference (:data:`wbc_nnabla.predictions.DOMAIN_COLUMNS`): ``domain_distance``
(the cell's distance to the training cells, in SDs of those cells) and
``outside_domain`` (bool: beyond the reference's per-cell threshold). This
module describes what those columns mean for a run and each smear:
:func:`summarise` gives the median distance and the share of cells outside, and
a smear is outside the training domain when that share exceeds
:data:`SMEAR_SHARE`; :data:`WARNING` is the sentence a report prints beside it.

It belongs to the owner of the predictions file (:mod:`wbc_nnabla.predictions`),
so that scoring and reporting read the columns without the cross-lab domain
check (:mod:`wbc_nnabla.domain`, which computes the columns and re-exports these
names). Not in Sasaki et al. (2020), whose model is used in the lab that trained
it. NumPy only.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

#: A smear (or run) is outside the training domain when more than this share of its cells is
#: outside. Measured by benchmarks/bench_domain.py (docs/benchmarks.md): in-domain pbc6
#: validation cells in random smears of 150 stay below it, foreign labs' cells are far above.
SMEAR_SHARE = 0.15
#: The warning a report prints beside a smear outside the training domain.
WARNING = "outside the training domain: do not trust these numbers without review"


def smear_is_outside(share_outside: float) -> bool:
    """A smear (or run) is outside the training domain when more than :data:`SMEAR_SHARE` of its cells are."""
    return bool(share_outside > SMEAR_SHARE)


def _group(dist: np.ndarray, flags: np.ndarray) -> dict:
    share = float(flags.mean()) if len(flags) else float("nan")
    return dict(n_cells=int(len(dist)), median_distance=float(np.median(dist)) if len(dist) else float("nan"),
                share_outside=share, outside_domain=smear_is_outside(share) if len(flags) else False)


def summarise(dist: Sequence[float], flags: Sequence[bool], smears: Sequence[str],
              threshold: Optional[float] = None) -> dict:
    """Per-run and per-smear summary of per-cell distances and outside flags.

    dist: ``(N,)`` per-cell distances (``domain_distance``).
    flags: ``(N,)`` per-cell outside flags (``outside_domain``).
    smears: ``(N,)`` smear name per cell.
    threshold: the reference's per-cell threshold, recorded as ``cell_threshold`` (None: unknown).

    Returns ``available`` (True), ``cell_threshold``, ``smear_share``
    (:data:`SMEAR_SHARE`), ``run`` (``n_cells``, ``median_distance``,
    ``share_outside``, ``outside_domain``) and ``smears``: the same per smear
    name, in sorted order.
    """
    dist, flags = np.asarray(dist, dtype=np.float64), np.asarray(flags, dtype=bool)
    smears = np.asarray([str(s) for s in smears], dtype=object)
    per: Dict[str, dict] = {str(s): _group(dist[smears == s], flags[smears == s]) for s in sorted(set(smears))}
    return dict(available=True, cell_threshold=threshold, smear_share=SMEAR_SHARE, run=_group(dist, flags),
                smears=per)


def unavailable(reason: str) -> dict:
    """The summary of a run whose model stores no reference (the check could not be made)."""
    return dict(available=False, reason=reason)


def outside_smears(summary: dict) -> List[str]:
    """Names of the smears a :func:`summarise` result flags as outside the training domain (cells without a
    smear name, ``""``, are in no named smear: the run's own flag covers them)."""
    if not summary.get("available"):
        return []
    return [s for s, v in summary["smears"].items() if s and v["outside_domain"]]
