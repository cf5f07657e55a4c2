"""Test data built once, here: demo-cell subsets, a VOC annotation, the tiny NNC dataset and model, synthetic predictions.

Not part of the library. Test modules import it by name (``from helpers import
...``; pytest puts ``tests/`` on ``sys.path``); the session-scoped fixtures of
``conftest.py`` (``tiny_dataset``, ``tiny_model``) are built with it. Benchmarks
import it with the repository root on ``sys.path``::

    sys.path.insert(0, str(ROOT))
    from tests.helpers import predictions_from_confusion

Nothing here imports nnabla at import time (scoring tests stay nnabla-free).
"""
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from wbc_nnabla import classes, fileio
from wbc_nnabla.classes import CLASSES6
from wbc_nnabla.predictions import PROB_COLUMNS

# ----------------------------------------------------------------------------- graphs


def function_names(v) -> list:
    """nnabla function type names (``Convolution``, ``Rand``, ...) of the graph ending at ``v``, in visit order."""
    names = []
    v.visit(lambda f: names.append(f.info.type_name))
    return names


def nnp_text(path) -> str:
    """The network text (every ``.nntxt`` member, joined) of the ``.nnp`` at ``path``."""
    with zipfile.ZipFile(path) as z:
        return "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".nntxt"))


def check_redrawn_and_seeded(term, x: np.ndarray) -> None:
    """Assert that ``term(variable, seed)``, a random augmentation step of the training graph, draws anew
    at each forward and that a new graph with the same seed draws the first forward's values again
    (what makes a resumed run exact)."""
    import nnabla as nn
    y = term(nn.Variable.from_numpy_array(x), 9)
    y.forward()
    first = y.d.copy()
    y.forward()
    assert not np.array_equal(first, y.d)
    again = term(nn.Variable.from_numpy_array(x), 9)
    again.forward()
    np.testing.assert_array_equal(first, again.d)


# ----------------------------------------------------------------------------- files


def cross_entropy_of(df: pd.DataFrame) -> float:
    """Mean cross-entropy of a predictions frame's ``prob_*`` columns against its ``label`` column: a
    model's Validation Error recomputed from what ``predict`` wrote."""
    probs = df[list(PROB_COLUMNS)].to_numpy()
    y = np.array([CLASSES6.index(v) for v in df["label"]])
    return float(-np.log(probs[np.arange(len(y)), y]).mean())


def file_hashes(*paths) -> dict:
    """``{path: SHA-256}`` of each file given and of every file under each folder given (sources
    a command must only read are compared before and after it)."""
    files = []
    for f in map(Path, paths):
        files += sorted(p for p in f.rglob("*") if p.is_file()) if f.is_dir() else [f]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ----------------------------------------------------------------------------- demo cells


#: A Pascal VOC annotation of field ``f1.jpg``: one WBC box (centre 30, 40) and one RBC box.
VOC = """<annotation><filename>f1.jpg</filename>
<object><name>WBC</name><bndbox><xmin>10</xmin><ymin>20</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>
<object><name>RBC</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3</xmax><ymax>4</ymax></bndbox></object>
</annotation>"""


def demo_cells(per_class: int = 2) -> pd.DataFrame:
    """The first ``per_class`` embedded demo cells of each class (a cell table, in the demo's order)."""
    df = fileio.read_cells(fileio.demo_data())
    return df.groupby("label", sort=False).head(per_class).reset_index(drop=True)


def demo_labels_csv(folder: Path, per_class: int = 3, smears: bool = False, drop=()) -> Path:
    """``folder/src/labels.csv`` listing ``per_class`` demo cells of each class (absolute paths).

    Rows in Table 1 class order; with ``smears`` the cells of a class go to
    smears ``S0``, ``S1``, ``S2`` in turn; classes in ``drop`` are left out.
    """
    df = demo_cells(per_class)
    rows = []
    for c in CLASSES6:
        if c in drop:
            continue
        for j, p in enumerate(df.loc[df["label"] == c, "path"]):
            rows.append({"path": p, "label": c, "smear": f"S{j % 3}" if smears else ""})
    out = Path(folder) / "src" / "labels.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    return out


def demo_nnc_dataset(root: Path, n_train: int, n_valid: int) -> Path:
    """NNC dataset folder of demo cells: ``n_train`` / ``n_valid`` images per class.

    ``train.csv`` and ``valid.csv`` (``x:image,y:label``, absolute image paths),
    rows grouped by class (classes in name order); no image is in both.
    """
    root = Path(root)
    df = fileio.read_cells(fileio.demo_data())
    tr, va = [], []
    for _, g in df.groupby("label"):
        tr += list(g.index[:n_train])
        va += list(g.index[n_train:n_train + n_valid])
    for name, rows in (("train.csv", tr), ("valid.csv", va)):
        fileio.write_nnc_csv(root / name, df.path[rows], [classes.index6(v) for v in df.label[rows]])
    return root


# ----------------------------------------------------------------------------- the tiny trained model

#: Training settings of the tiny model (with ``epochs``): 32 px, 2 iterations of 4 images an epoch.
TINY_TRAIN = dict(size=32, batch_size=4, pretrained="none", progress=False, max_iterations=2, train_eval_limit=4)


def tiny_model(dataset: Path, out: Path, epochs: int = 2, norm: str = "batch") -> Path:
    """``training.train`` of a ResNet-18 from scratch on ``dataset`` with :data:`TINY_TRAIN`; returns ``out``.

    norm: ``batch`` (the paper's BatchNorm), ``group`` (GroupNorm, ``--norm group``) or ``ibn`` (IBN-a).

    ``out`` holds what training writes (``model.nnp`` at 32 px, ``model.h5``,
    ``config.json``, ``monitor/``, ``checkpoints/``...). Seconds on a CPU.
    """
    from wbc_nnabla import training
    from wbc_nnabla.recipe import TrainConfig
    training.train(dataset, out, TrainConfig(epochs=epochs, norm=norm, site_record=True, **TINY_TRAIN))
    return Path(out)


# ----------------------------------------------------------------------------- synthetic predictions


def small_counts() -> np.ndarray:
    """A small six-class confusion ``(6, 6)`` (human rows x AI columns, 76 cells) with Lymph/Mono and
    Band/Segment mix-ups."""
    c = np.diag([3, 4, 20, 5, 4, 30])
    c[2, 3], c[3, 2], c[4, 5], c[5, 4] = 2, 1, 3, 4
    return c


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
