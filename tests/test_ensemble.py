"""`wbc-nnabla ensemble` (mean probabilities of several models) and `predict --tta` (8 views per cell)."""
import json

import numpy as np
import pandas as pd
import pytest

from wbc_nnabla import cli, classes, predictions
from wbc_nnabla.ensemble import combine, ensemble
from wbc_nnabla.predictions import PROB_COLUMNS, PredictionsError, predictions_table, read_predictions


def _member(folder, name, probs, labels, order=None, prior="none", domain=None):
    """A predictions CSV (+ run .json recording ``prior``) of the cells c0..cN with ``probs`` (N, 6)."""
    n = len(probs)
    cells = pd.DataFrame({"path": [f"/cells/c{i}.png" for i in range(n)], "smear": [f"S{i % 2}" for i in range(n)],
                          "label": labels})
    df = predictions_table(cells, probs, classes.CLASSES6)
    if domain is not None:
        df["domain_distance"], df["outside_domain"] = domain
    if order is not None:
        df = df.iloc[order].reset_index(drop=True)
    path = folder / f"{name}.csv"
    predictions.write_predictions(df, path, config=dict(stage="predict", model=f"{name}.nnp", prior=prior))
    return path


@pytest.fixture
def three(tmp_path):
    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(6) * 0.5, size=12) for _ in range(3)]
    labels = [classes.CLASSES6[i % 6] for i in range(12)]
    return probs, labels


def test_mean_of_probabilities_in_any_row_order(tmp_path, three):
    probs, labels = three
    files = [_member(tmp_path, f"m{k}", p, labels, order=np.random.default_rng(k).permutation(12) if k else None)
             for k, p in enumerate(probs)]
    out = tmp_path / "ens.csv"
    assert cli.main(["ensemble", *map(str, files), str(out)]) == 0
    got = read_predictions(out)
    mean = np.mean(probs, axis=0)
    assert list(got["path"]) == [f"/cells/c{i}.png" for i in range(12)]          # the first member's order
    np.testing.assert_allclose(got[list(PROB_COLUMNS)].to_numpy(), mean, atol=1e-6)
    assert list(got["pred6"]) == [classes.CLASSES6[i] for i in mean.argmax(1)]
    assert list(got["label"]) == labels and list(got["smear"]) == [f"S{i % 2}" for i in range(12)]
    cfg = json.loads(out.with_suffix(".json").read_text())
    assert cfg["stage"] == "ensemble" and [m["model"] for m in cfg["members"]] == ["m0.nnp", "m1.nnp", "m2.nnp"]
    assert cfg["prior"] == "none"
    # an ordinary predictions CSV: score reads it
    assert cli.main(["score", str(out), str(tmp_path / "score"), "--no-figures", "--no-gallery"]) == 0
    assert (tmp_path / "score" / "summary.json").exists()


def test_the_ensemble_can_beat_its_members(tmp_path):
    """Three models each wrong on a different third of the cells: the mean is right on all of them."""
    labels = ["Lymph"] * 9
    lymph, mono = classes.CLASSES6.index("Lymph"), classes.CLASSES6.index("Mono")
    members = []
    for k in range(3):
        p = np.full((9, 6), 0.02)
        p[:, lymph], p[:, mono] = 0.60, 0.32
        p[3 * k:3 * k + 3, lymph], p[3 * k:3 * k + 3, mono] = 0.40, 0.52      # this member's mistakes
        members.append(read_predictions(predictions_table(
            pd.DataFrame({"path": [f"c{i}" for i in range(9)], "smear": "", "label": labels}), p, classes.CLASSES6)))
    for m in members:
        assert (m["pred6"] == "Lymph").mean() == pytest.approx(2 / 3)
    assert (combine(members, ["a", "b", "c"])["pred6"] == "Lymph").all()


def test_domain_flags_any_member_and_largest_distance(tmp_path, three):
    probs, labels = three
    d = [(np.full(12, 1.0), np.zeros(12, int)), (np.arange(12.0), (np.arange(12) > 9).astype(int))]
    files = [_member(tmp_path, f"m{k}", probs[k], labels, domain=d[k]) for k in range(2)]
    got = read_predictions(ensemble(files, tmp_path / "ens.csv"))
    np.testing.assert_allclose(got["domain_distance"], np.maximum(1.0, np.arange(12.0)))
    assert list(got["outside_domain"]) == [False] * 10 + [True] * 2


@pytest.mark.parametrize("case, match", [
    ("one", "at least 2 predictions files"),
    ("missing_cell", "has no row for cell '/cells/c11.png'"),
    ("extra_cell", "cell '/cells/c12.png' is not in"),
    ("other_label", "label 'Mono' of cell '/cells/c0.png' differs"),
    ("prior", "predicted with --prior Segment=0.6,Lymph=0.4, but"),
    ("twice", "given twice"),
    ("not_csv", "must end in .csv"),
])
def test_bad_members_are_named_and_nothing_is_written(tmp_path, three, capsys, case, match):
    probs, labels = three
    a = _member(tmp_path, "a", probs[0], labels)
    out = tmp_path / ("ens.txt" if case == "not_csv" else "ens.csv")
    if case == "missing_cell":
        b = _member(tmp_path, "b", probs[1][:11], labels[:11])
    elif case == "extra_cell":
        b = _member(tmp_path, "b", np.vstack([probs[1], probs[1][:1]]), labels + ["Lymph"])
    elif case == "other_label":
        b = _member(tmp_path, "b", probs[1], ["Mono"] + labels[1:])
    elif case == "prior":
        b = _member(tmp_path, "b", probs[1], labels, prior={"Segment": 0.6, "Lymph": 0.4})
    else:
        b = a if case == "twice" else _member(tmp_path, "b", probs[1], labels)
    members = [a] if case == "one" else [a, b]
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    assert cli.main(["ensemble", *map(str, members), str(out)]) == 2
    assert match in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before             # nothing written or changed


def test_a_member_is_never_the_output(tmp_path, three, capsys):
    probs, labels = three
    a, b = (_member(tmp_path, n, probs[k], labels) for k, n in enumerate("ab"))
    before = a.read_bytes()
    assert cli.main(["ensemble", str(a), str(b), str(a), "--overwrite"]) == 2
    assert a.read_bytes() == before
    assert str(a) in capsys.readouterr().err


# ----------------------------------------------------------------------------- predict --tta


def test_dihedral_views_are_the_eight_turns_and_mirrors():
    from wbc_nnabla.predictor import TTA_VIEWS, dihedral_view
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    views = [dihedral_view(x, k, m) for k, m in TTA_VIEWS]
    assert len({v.tobytes() for v in views}) == 8                               # all different
    np.testing.assert_array_equal(views[1][0, 0], np.rot90(x[0, 0]))
    np.testing.assert_array_equal(views[4][0, 0], x[0, 0, :, ::-1])
    for v in views:                                                             # the same pixels, moved
        np.testing.assert_array_equal(np.sort(v.reshape(2, 3, -1)), np.sort(x.reshape(2, 3, -1)))


nn = pytest.importorskip("nnabla")


@pytest.mark.slow
def test_tta_predictions_do_not_depend_on_how_a_cell_lies(tiny_model, tmp_path):
    """With --tta a cell turned by 90 degrees or mirrored gets the same probabilities; without, not."""
    import cv2
    from helpers import demo_cells
    cells = demo_cells(1)
    folder = tmp_path / "cells"
    folder.mkdir()
    rows = []
    for i, path in enumerate(cells["path"]):
        img = cv2.imread(str(path))
        for name, view in (("as_is", img), ("turned", np.rot90(img)), ("mirrored", img[:, ::-1])):
            f = folder / f"{i}_{name}.png"
            cv2.imwrite(str(f), np.ascontiguousarray(view))
            rows.append(dict(path=str(f), cell=i, view=name))
    listing = tmp_path / "cells.csv"
    pd.DataFrame(rows)[["path"]].to_csv(listing, index=False)
    spread = {}
    for flag in ([], ["--tta"]):
        out = tmp_path / f"pred{len(flag)}.csv"
        assert cli.main(["predict", str(tiny_model / "model.nnp"), str(listing), str(out), "--no-progress",
                         *flag]) == 0
        p = pd.read_csv(out)[list(PROB_COLUMNS)].to_numpy().reshape(len(cells), 3, 6)
        spread[bool(flag)] = np.abs(p - p[:, :1]).max()
        assert json.loads(out.with_suffix(".json").read_text())["tta"] is bool(flag)
    assert spread[True] < 1e-3 < spread[False]
