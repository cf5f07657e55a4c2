"""`wbc-nnabla ensemble` (mean probabilities of several models) and `predict --tta` (8 views per cell)."""
import json

import numpy as np
import pandas as pd
import pytest

from wbc_nnabla import cli, classes, predictions
from wbc_nnabla.ensemble import combine, ensemble
from wbc_nnabla.predictions import PROB_COLUMNS, predictions_table, read_predictions


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


# ----------------------------------------------------------------------------- --match source


def _rendering(path, cells, probs_of, order, cells_arg):
    """A predictions CSV of ``cells`` (a cell table) in ``order``, probabilities ``probs_of(row)``,
    whose run description names ``cells_arg`` as the cells predict was given."""
    cells = cells.iloc[order].reset_index(drop=True)
    probs = np.array([probs_of(r) for _, r in cells.iterrows()])
    df = predictions_table(cells[["path", "smear", "label"]], probs, classes.CLASSES6)
    predictions.write_predictions(df, path, config=dict(stage="predict", model=path.stem + ".nnp",
                                                        cells=str(cells_arg), prior="none"))
    return path


@pytest.fixture
def renderings(tmp_path, three):
    """Twelve demo cells as listed (Model B's input) and with the background removed by
    ``build_dataset(..., inference=True)`` (Model A's input), and a predictions CSV of each in
    another row order: (raw CSV, removed CSV, raw paths, the two members' probabilities per cell)."""
    from helpers import demo_labels_csv
    from wbc_nnabla import datasets, fileio
    src = demo_labels_csv(tmp_path, per_class=2)
    raw = fileio.read_cells(src)
    rm = datasets.build_dataset(src, tmp_path / "rm", background="remove", inference=True, size=16, progress=False)
    rm_cells = fileio.read_cells(rm / "cells.csv")
    manifest = datasets.read_manifest(rm)
    source_of = dict(zip(manifest["image_path"], manifest["source_path"]))
    index = {p: i for i, p in enumerate(raw["path"])}
    probs, _ = three
    a = _rendering(tmp_path / "pA.csv", rm_cells, lambda r: probs[0][index[source_of[r["path"]]]],
                   np.random.default_rng(1).permutation(12), rm / "cells.csv")
    b = _rendering(tmp_path / "pB.csv", raw, lambda r: probs[1][index[r["path"]]], np.arange(12), src)
    return b, a, list(raw["path"]), probs


def test_match_source_pairs_the_two_renderings_of_each_cell(tmp_path, renderings, capsys):
    b, a, raw_paths, probs = renderings
    out = tmp_path / "AB.csv"
    assert cli.main(["ensemble", str(b), str(a), str(tmp_path / "by_path.csv")]) == 2      # other files: no pairs
    assert "has no row for cell" in capsys.readouterr().err
    assert cli.main(["ensemble", str(b), str(a), str(out), "--match", "source"]) == 0
    got = read_predictions(out)
    assert list(got["path"]) == raw_paths                                       # the first member's cells
    np.testing.assert_allclose(got[list(PROB_COLUMNS)].to_numpy(), (probs[0][:12] + probs[1][:12]) / 2, atol=1e-6)
    assert json.loads(out.with_suffix(".json").read_text())["match"] == "source"
    again = read_predictions(ensemble([a, b], tmp_path / "BA.csv", match="source"))   # Model A's images first
    assert all("/rm/images/" in p for p in again["path"])
    np.testing.assert_allclose(np.sort(again[list(PROB_COLUMNS)].to_numpy(), axis=0),
                               np.sort(got[list(PROB_COLUMNS)].to_numpy(), axis=0), atol=1e-6)


@pytest.mark.parametrize("case, match", [
    ("not_in_manifest", "rm2/manifest.csv; --match source needs the manifest"),
    ("one_source_twice", "both come from"),
    ("bad_manifest", "not a build-dataset manifest (no column source_path)"),
    ("other_cells", "has no row for cell"),
])
def test_match_source_refuses_what_it_cannot_pair(tmp_path, renderings, capsys, case, match):
    import shutil
    b, a, raw_paths, probs = renderings
    rm_cells = pd.read_csv(tmp_path / "rm" / "cells.csv")
    if case == "bad_manifest":
        m = pd.read_csv(tmp_path / "rm" / "manifest.csv").drop(columns=["source_path"])
        m.to_csv(tmp_path / "rm" / "manifest.csv", index=False)
    elif case == "not_in_manifest":                 # a dataset's image whose manifest row is gone
        shutil.copytree(tmp_path / "rm", tmp_path / "rm2")
        pd.read_csv(tmp_path / "rm2" / "manifest.csv").iloc[1:].to_csv(tmp_path / "rm2" / "manifest.csv", index=False)
        cells = rm_cells.assign(path=lambda d: [str((tmp_path / "rm2" / p).resolve()) for p in d["path"]], smear="")
        a = _rendering(tmp_path / "pA2.csv", cells, lambda r: probs[0][0], np.arange(12), tmp_path / "rm2" / "cells.csv")
    elif case == "one_source_twice":                # a manifest whose two images come from one source image
        shutil.copytree(tmp_path / "rm", tmp_path / "rm3")
        man = pd.read_csv(tmp_path / "rm3" / "manifest.csv")
        man.loc[man.index[-1], "source_path"] = man["source_path"].iat[0]
        man.to_csv(tmp_path / "rm3" / "manifest.csv", index=False)
        cells = rm_cells.assign(path=lambda d: [str((tmp_path / "rm3" / p).resolve()) for p in d["path"]], smear="")
        a = _rendering(tmp_path / "pA3.csv", cells, lambda r: probs[0][0], np.arange(12), tmp_path / "rm3" / "cells.csv")
    elif case == "other_cells":                     # Model A predicted only 11 of the 12 cells
        cells = rm_cells.iloc[:11].assign(path=lambda d: [str((tmp_path / "rm" / p).resolve()) for p in d["path"]],
                                          smear="")
        a = _rendering(tmp_path / "pA4.csv", cells, lambda r: probs[0][0], np.arange(11), tmp_path / "rm" / "cells.csv")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert cli.main(["ensemble", str(b), str(a), str(tmp_path / "AB.csv"), "--match", "source"]) == 2
    assert match in capsys.readouterr().err
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before       # nothing written


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
