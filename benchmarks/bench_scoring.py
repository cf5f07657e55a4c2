"""Benchmark: score 57 smears x 200 cells (synthetic predictions) including figures and reports.

Usage: python benchmarks/bench_scoring.py [--smears 57] [--cells 200] [--repeat 3] [--out DIR]

Builds a synthetic predictions CSV whose pooled confusion has the proportions
of the constructed Table 1 B2 of tests/test_scoring.py, then times, each run in
a fresh output folder: reading + scoring (``scoring.score`` with a pending
threshold and a target accuracy) and writing (``report.write_score``: tables,
JSON, six figures incl. the disagreement gallery, report.html, report.md).
Image files do not exist, so the gallery draws placeholders (reading real
thumbnails adds about 1 ms per image, 36 images at most). Also times
scoring and ``compare`` of two such files with its box plots.
"""
import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import predictions_from_confusion  # noqa: E402
from wbc_nnabla import report, scoring  # noqa: E402

B2_SHARE = np.array([
    [60, 0, 0, 0, 0, 0], [0, 280, 0, 0, 0, 0], [1, 0, 2874, 22, 0, 3],
    [0, 0, 35, 523, 1, 3], [0, 0, 1, 2, 522, 75], [0, 4, 3, 4, 1033, 4356]], dtype=float)


def counts_for(n_cells: int, share: np.ndarray) -> np.ndarray:
    """Integer counts with the proportions of ``share``; row totals depend only on the row sums."""
    rows = np.floor(share.sum(axis=1) / share.sum() * n_cells).astype(int)
    rows[5] += n_cells - rows.sum()  # rounding remainder to Segment
    c = np.floor(share / share.sum(axis=1, keepdims=True) * rows[:, None]).astype(int)
    c[np.diag_indices(6)] += rows - c.sum(axis=1)  # row remainders on the diagonal
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smears", type=int, default=57)
    ap.add_argument("--cells", type=int, default=200, help="cells per smear")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="folder for the outputs (default: a temp folder)")
    a = ap.parse_args()
    work = Path(a.out or tempfile.mkdtemp(prefix="bench_scoring_"))
    work.mkdir(parents=True, exist_ok=True)
    n = a.smears * a.cells
    csv_b = work / "pred_B.csv"
    predictions_from_confusion(counts_for(n, B2_SHARE), n_smears=a.smears, seed=0).to_csv(csv_b, index=False)
    share_a = B2_SHARE.copy()  # the constructed A2 of tests/test_scoring.py (same row totals)
    share_a[2], share_a[3] = [1, 0, 2869, 27, 0, 3], [0, 0, 44, 513, 1, 4]
    share_a[4], share_a[5] = [0, 0, 1, 2, 573, 24], [0, 5, 4, 6, 1623, 3762]
    csv_a = work / "pred_A.csv"
    predictions_from_confusion(counts_for(n, share_a), n_smears=a.smears, seed=0).to_csv(csv_a, index=False)
    print(f"{n} cells in {a.smears} smears; {platform.machine()}, Python {platform.python_version()}")
    for k in range(a.repeat):
        t0 = time.perf_counter()
        r = scoring.score(csv_b, pending_threshold=0.6, pending_margin=0.1, target_accuracy=0.95)
        t1 = time.perf_counter()
        report.write_score(r, work / f"score_{k}")
        t2 = time.perf_counter()
        c = scoring.compare(scoring.score(csv_a), scoring.score(csv_b))
        report.write_compare(c, work / f"compare_{k}")
        t3 = time.perf_counter()
        print(f"run {k + 1}: score {t1 - t0:.2f} s, write with figures+report {t2 - t1:.2f} s, "
              f"total score {t2 - t0:.2f} s; compare incl. report {t3 - t2:.2f} s")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
