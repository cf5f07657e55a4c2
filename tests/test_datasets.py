"""Tests of wbc_nnabla.datasets (section II.3 datasets) and `wbc-nnabla build-dataset`."""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import demo_labels_csv
from wbc_nnabla import classes, datasets, fileio
from wbc_nnabla.cli import main

SMALL = dict(size=32, progress=False)


def _manifest(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "manifest.csv", keep_default_na=False, dtype=str)


# ----------------------------------------------------------------------------- pure functions


def test_dihedral_gives_eight_distinct_lossless_variants():
    rgb = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)  # no symmetry
    vs = [datasets.dihedral(rgb, k) for k in range(8)]
    assert np.array_equal(vs[0], rgb)
    assert np.array_equal(vs[2], rgb[::-1, ::-1])
    assert np.array_equal(vs[4], rgb[:, ::-1])
    assert len({v.tobytes() + bytes(v.shape) for v in vs}) == 8
    for v in vs:
        assert sorted(v.ravel().tolist()) == sorted(rgb.ravel().tolist())
    with pytest.raises(ValueError, match="0-7"):
        datasets.dihedral(rgb, 8)


def test_class_targets_spread_the_remainder_in_table1_order():
    t = datasets.class_targets(2385)
    assert list(t) == list(classes.CLASSES6)
    assert sum(t.values()) == 2385
    assert [t[c] for c in classes.CLASSES6] == [398, 398, 398, 397, 397, 397]
    t = datasets.class_targets(3284)
    assert sum(t.values()) == 3284 and max(t.values()) - min(t.values()) == 1
    assert t["Basophil"] == t["Eosinophil"] == 548 and t["Segment"] == 547


def test_source_variants_even_and_cycling_through_all_eight():
    v = datasets.source_variants(1, 20)
    assert v == [list(range(8)) + list(range(8)) + [0, 1, 2, 3]]
    v = datasets.source_variants(3, 10)
    assert [len(x) for x in v] == [4, 3, 3]
    assert v[0] == [0, 1, 2, 3]
    v = datasets.source_variants(5, 3)  # more sources than images: two left unused
    assert [len(x) for x in v] == [1, 1, 1, 0, 0]


def test_plan_variants_balances_to_total():
    counts = {"Basophil": 2, "Eosinophil": 50, "Lymph": 10, "Mono": 7, "Band": 1, "Segment": 30}
    plan = datasets.plan_variants(counts, 100)
    per_class = {c: sum(len(v) for v in plan[c]) for c in counts}
    assert sum(per_class.values()) == 100
    assert max(per_class.values()) - min(per_class.values()) <= 1
    assert [len(plan[c]) for c in counts] == list(counts.values())
    plan = datasets.plan_variants({"Lymph": 3, "Mono": 0}, 9)  # an absent class is left out
    assert plan["Mono"] == [] and sum(len(v) for v in plan["Lymph"]) == 9


def test_split_cells_stratified_seeded_and_smear_grouped():
    table = pd.DataFrame({"label": ["Lymph"] * 20 + ["Mono"] * 10, "smear": [""] * 30})
    s = datasets.split_cells(table, 0.2, seed=1)
    assert (s[:20] == "valid").sum() == 4 and (s[20:] == "valid").sum() == 2
    assert np.array_equal(s, datasets.split_cells(table, 0.2, seed=1))
    assert not np.array_equal(s, datasets.split_cells(table, 0.2, seed=2))
    table["smear"] = [f"S{i % 6}" for i in range(30)]
    s = datasets.split_cells(table, 0.3, seed=0)
    for smear, g in pd.Series(s).groupby(table["smear"]):
        assert g.nunique() == 1, f"smear {smear} in both splits"
    assert set(s) == {"train", "valid"}
    with pytest.raises(ValueError, match="valid_fraction"):
        datasets.split_cells(table, 1.0)


# ----------------------------------------------------------------------------- builds


def test_build_balanced_no_leakage_and_loadable(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=5)
    out = datasets.build_dataset(src, tmp_path / "ds", background="remove", total=62, **SMALL)
    m = _manifest(out)
    used = m[m["image"] != ""]
    assert len(used) == 62
    train, valid = used[used["split"] == "train"], used[used["split"] == "valid"]
    assert len(valid) == round(62 * 0.2)
    for part in (train, valid):
        counts = part["label"].value_counts()
        assert len(counts) == 6 and counts.max() - counts.min() <= 1
    # no leakage: no source cell (hence no variant of it) in both splits
    assert not set(train["cell_id"]) & set(valid["cell_id"])
    assert not set(train["source_path"]) & set(valid["source_path"])
    # NNC CSVs match the manifest and load with nnabla's CSV data iterator
    tr = pd.read_csv(out / "train.csv")
    assert list(tr.columns) == ["x:image", "y:label"] and len(tr) == len(train)
    # the same (image, label) rows as the manifest, in a shuffled order
    assert sorted(zip(tr["x:image"], tr["y:label"])) == sorted(zip(train["image"], train["y"].astype(int)))
    from nnabla.utils.data_iterator import data_iterator_csv_dataset
    for name, n in (("train.csv", len(train)), ("valid.csv", len(valid))):
        it = data_iterator_csv_dataset(str(out / name), 4, shuffle=False, with_file_cache=False)
        assert it.size == n
        x, y = it.next()
        assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1)
        it.close()
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["split_images"] == {"train": len(train), "valid": len(valid)}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["background"] == "remove" and cfg["total"] == 62 and "nnabla" in cfg["environment"]
    assert (out / "build_report.md").read_text().startswith("# build-dataset report")


def test_smear_level_no_leakage(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=6, smears=True)
    out = datasets.build_dataset(src, tmp_path / "ds", background="keep", total=48, valid_fraction=0.34,
                                 **SMALL)
    m = _manifest(out)
    per_smear = m.groupby("smear")["split"].nunique()
    assert (per_smear == 1).all(), per_smear
    assert set(m["split"]) == {"train", "valid"}


def test_remove_and_keep_builds_share_the_split(tmp_path):
    """Model B fine-tunes Model A: dataset ②'s valid cells must not be in dataset ①'s train."""
    src = demo_labels_csv(tmp_path, per_class=5)
    a = _manifest(datasets.build_dataset(src, tmp_path / "a", background="remove", total=60, **SMALL))
    b = _manifest(datasets.build_dataset(src, tmp_path / "b", background="keep", total=90, **SMALL))
    split_a = a.drop_duplicates("cell_id").set_index("cell_id")["split"]
    split_b = b.drop_duplicates("cell_id").set_index("cell_id")["split"]
    assert split_a.sort_index().equals(split_b.sort_index())
    assert not set(a.loc[a["split"] == "train", "source_path"]) & set(b.loc[b["split"] == "valid", "source_path"])


def test_same_inputs_give_byte_identical_outputs(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=2)
    a = datasets.build_dataset(src, tmp_path / "a", background="remove", total=30, seed=3, **SMALL)
    b = datasets.build_dataset(src, tmp_path / "b", background="remove", total=30, seed=3, **SMALL)
    a, b = a.path, b.path
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb and len(fa) > 10
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = datasets.build_dataset(src, tmp_path / "c", background="remove", total=30, seed=4, **SMALL)
    assert (c / "manifest.csv").read_bytes() != (a / "manifest.csv").read_bytes()
    assert (c / "train.csv").read_bytes() != (a / "train.csv").read_bytes()


def test_split_csvs_are_shuffled_not_grouped_by_class(tmp_path):
    """train.csv/valid.csv rows come in a seeded random order: a reader taking "the first N" sees all classes."""
    src = demo_labels_csv(tmp_path, per_class=5)
    out = datasets.build_dataset(src, tmp_path / "ds", background="keep", total=120, seed=0, **SMALL)
    for name in ("train.csv", "valid.csv"):
        y = pd.read_csv(out / name)["y:label"].to_numpy()
        runs = 1 + int((np.diff(y) != 0).sum())
        assert len(set(y.tolist())) == 6 and runs > 3 * 6, (name, runs)
    first = pd.read_csv(out / "train.csv")["y:label"].head(24)
    assert first.nunique() == 6
    # the manifest still lists every CSV row
    m = _manifest(out)
    assert sorted(m.loc[m["split"] == "train", "image"]) == \
        sorted(p.replace("\\", "/") for p in pd.read_csv(out / "train.csv")["x:image"])


def test_single_source_class_repeats_variants_and_reports_it(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=4)
    df = pd.read_csv(src)
    df = pd.concat([df[df["label"] != "Basophil"], df[df["label"] == "Basophil"].head(1)])
    df.to_csv(src, index=False)
    out = datasets.build_dataset(src, tmp_path / "ds", background="keep", total=120, **SMALL)
    m = _manifest(out)
    baso = m[m["label"] == "Basophil"]
    assert (baso["split"] == "train").all()  # one cell cannot be in both splits
    assert len(baso) == 16  # train share 96 over 6 classes
    assert sorted(baso["k"].astype(int).value_counts().to_dict().items()) == [(k, 2) for k in range(8)]
    assert baso["image"].nunique() == 8  # identical repeats stored once, listed twice
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["repeats"] == ["Basophil"] and rep["classes"]["Basophil"]["identical_repeats"] == 8
    assert any("Basophil" in w for w in rep["warnings"])  # no valid Basophil
    assert "repeated" in (out / "build_report.md").read_text()


def test_missing_and_corrupt_images_stop_or_are_skipped(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=2)
    df = pd.read_csv(src)
    bad = tmp_path / "src" / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    df.loc[len(df)] = [str(tmp_path / "src" / "missing.png"), "Lymph", ""]
    df.loc[len(df)] = [str(bad), "Mono", ""]
    df.to_csv(src, index=False)
    with pytest.raises(fileio.ImageReadError, match="missing.png"):
        datasets.build_dataset(src, tmp_path / "ds", background="keep", total=24, **SMALL)
    assert not (tmp_path / "ds").exists()
    df.drop(index=len(df) - 2).to_csv(src, index=False)
    with pytest.raises(fileio.ImageReadError, match="corrupt.jpg"):
        datasets.build_dataset(src, tmp_path / "ds", background="keep", total=24, **SMALL)
    df.to_csv(src, index=False)
    out = datasets.build_dataset(src, tmp_path / "ds", background="keep", total=24, skip_bad=True, **SMALL)
    rep = json.loads((out / "build_report.json").read_text())
    assert sorted(Path(s["path"]).name for s in rep["skipped"]) == ["corrupt.jpg", "missing.png"]
    assert "missing.png" in (out / "build_report.md").read_text()
    assert rep["images"] == 24 and rep["cells"] == 12


def test_refuses_bad_outputs_and_sources(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=1)
    image_dir = Path(pd.read_csv(src)["path"][0]).parent  # the folders of the listed images are sources too
    with pytest.raises(fileio.SourceError, match="inside the source folder"):
        datasets.build_dataset(src, image_dir / "out", background="keep", **SMALL)
    assert not (image_dir / "out").exists()
    (tmp_path / "exists").mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        datasets.build_dataset(src, tmp_path / "exists", background="keep", total=12, **SMALL)
    out = datasets.build_dataset(src, tmp_path / "exists", background="keep", total=12, overwrite=True, **SMALL)
    assert (out / "train.csv").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a build-dataset output"):
        datasets.build_dataset(src, tmp_path / "other", background="keep", total=12, overwrite=True, **SMALL)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
    with pytest.raises(fileio.SourceError, match="contains the source"):
        datasets.build_dataset(src, tmp_path, background="keep", total=12, overwrite=True, **SMALL)
    assert src.is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(fileio.SourceError, match="no images"):
        datasets.build_dataset(tmp_path / "empty", tmp_path / "o2", background="keep", **SMALL)
    unl = tmp_path / "unl" / "unl.csv"
    unl.parent.mkdir()
    pd.DataFrame({"path": [pd.read_csv(src)["path"][0]], "label": [""]}).to_csv(unl, index=False)
    with pytest.raises(fileio.SourceError, match="six-class label"):
        datasets.build_dataset(unl, tmp_path / "o3", background="keep", **SMALL)
    with pytest.raises(ValueError, match="background"):
        datasets.build_dataset(src, tmp_path / "o4", background="none", **SMALL)


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    src = demo_labels_csv(tmp_path, per_class=2)
    calls = {"n": 0}
    real = fileio.write_image

    def failing(path, rgb, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(path, rgb, *a, **k)

    monkeypatch.setattr(fileio, "write_image", failing)
    with pytest.raises(KeyboardInterrupt):
        datasets.build_dataset(src, tmp_path / "ds", background="keep", total=24, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_field_crops_at_centres_record_padding(tmp_path):
    rgb = np.full((100, 120, 3), 230, np.uint8)
    rgb[40:60, 50:70] = (90, 40, 140)
    field = tmp_path / "src" / "field.png"
    field.parent.mkdir()
    fileio.write_image(field, rgb)
    pd.DataFrame({"path": ["field.png"] * 2, "label": ["", ""], "smear": ["S1", "S1"],
                  "x": [60, 5], "y": [50, 95]}).to_csv(tmp_path / "src" / "cells.csv", index=False)
    out = datasets.build_dataset(tmp_path / "src" / "cells.csv", tmp_path / "inf", inference=True, crop=40,
                                 size=20, progress=False)
    m = _manifest(out)
    assert list(m["kind"]) == ["field", "field"]
    assert [int(v) for v in m.loc[0, ["box_x0", "box_y0", "box_x1", "box_y1"]]] == [40, 30, 80, 70]
    assert int(m.loc[0, "pad_top"]) + int(m.loc[0, "pad_left"]) == 0
    assert int(m.loc[1, "pad_left"]) == 15 and int(m.loc[1, "pad_bottom"]) == 15
    assert (m["background"] == "keep").all()
    cells = fileio.read_cells(out / "cells.csv")
    assert list(cells["smear"]) == ["S1", "S1"] and list(cells["label"]) == ["", ""]
    assert fileio.read_rgb(cells["path"][0]).shape == (20, 20, 3)
    assert list(pd.read_csv(out / "test.csv").columns) == ["x:image"]
    pd.DataFrame({"path": ["field.png"], "label": [""], "x": [500], "y": [5]}).to_csv(
        tmp_path / "src" / "far.csv", index=False)
    with pytest.raises(fileio.SourceError, match=r"far.csv:2: cell centre \(500, 5\) lies outside"):
        datasets.build_dataset(tmp_path / "src" / "far.csv", tmp_path / "inf2", inference=True, crop=40,
                               size=20, progress=False)


def test_inference_set_keeps_smear_and_loads(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=1, smears=True)
    out = datasets.build_dataset(src, tmp_path / "inf", inference=True, size=24, progress=False)
    assert not (out / "train.csv").exists()
    cells = fileio.read_cells(out / "cells.csv")
    assert len(cells) == 6 and set(cells["smear"]) == {"S0"}
    assert list(cells["label"]) == list(pd.read_csv(src)["label"])
    from nnabla.utils.data_iterator import data_iterator_csv_dataset
    it = data_iterator_csv_dataset(str(out / "test.csv"), 6, shuffle=False, with_file_cache=False)
    x, y = it.next()
    it.close()
    assert x.shape == (6, 3, 24, 24)
    assert y.ravel().tolist() == [classes.INDEX6[c] for c in cells["label"]]
    assert (_manifest(out)["transform"] == "rot0").all()
    with pytest.raises(ValueError, match="total"):
        datasets.build_dataset(src, tmp_path / "inf2", inference=True, total=10, progress=False)


def test_voc_folder_gives_unlabeled_cells_at_box_centres(tmp_path, bccd):
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    for name in ("BloodImage_00000", "BloodImage_00001"):
        shutil.copy(bccd / "Annotations" / f"{name}.xml", voc / "Annotations")
        shutil.copy(bccd / "JPEGImages" / f"{name}.jpg", voc / "JPEGImages")
    table = fileio.read_cells(voc)
    assert len(table) >= 2 and (table["label"] == "").all() and table["x"].notna().all()
    out = datasets.build_dataset(voc, tmp_path / "inf", inference=True, crop=200, size=32, progress=False)
    assert len(fileio.read_cells(out / "cells.csv")) == len(table)
    with pytest.raises(fileio.SourceError, match="--inference"):
        datasets.build_dataset(voc, tmp_path / "teach", background="keep", crop=200, **SMALL)


def test_single_cell_crop_is_centred_square_of_shorter_side(tmp_path):
    src = demo_labels_csv(tmp_path, per_class=1)
    out = datasets.build_dataset(src, tmp_path / "a", inference=True, crop=750, size=32, progress=False)
    m = _manifest(out)
    h, w = fileio.read_rgb(m["source_path"][0]).shape[:2]
    s = min(h, w)
    assert int(m["crop_px"][0]) == s
    assert [int(m[c][0]) for c in ("box_x0", "box_y0")] == [(w - s) // 2, (h - s) // 2]
    out = datasets.build_dataset(src, tmp_path / "b", inference=True, crop=100, size=32, progress=False)
    assert str(out) == str(tmp_path / "b") == f"{out}"
    assert (_manifest(out)["crop_px"].astype(int) == 100).all()
    assert json.loads((out / "build_report.json").read_text())["padded_cells"] == 0


# ----------------------------------------------------------------------------- CLI


def test_cli_build_dataset(tmp_path, capsys):
    src = demo_labels_csv(tmp_path, per_class=4)
    out = tmp_path / "ds"
    rc = main(["build-dataset", str(src), str(out), "--background", "keep", "--size", "32", "--total", "30",
               "--valid-fraction", "0.25", "--seed", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert rc == 0 and "Basophil" in printed
    assert printed.splitlines()[-1] == f"dataset: {out}"          # the folder, not the object's repr
    assert len(pd.read_csv(out / "valid.csv")) == round(30 * 0.25)
    assert main(["build-dataset", str(src), str(out), "--background", "keep", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["build-dataset", str(src), str(tmp_path / "x"), "--no-progress"]) == 2
    assert "--background is required" in capsys.readouterr().err
    assert main(["build-dataset", str(src), str(tmp_path / "x"), "--background", "keep",
                 "--crop-um", "20", "--no-progress"]) == 2
    assert "pixel_um" in capsys.readouterr().err
    assert main(["build-dataset", str(src), str(tmp_path / "inf"), "--inference", "--size", "24",
                 "--no-progress"]) == 0
    assert (tmp_path / "inf" / "cells.csv").is_file()


def test_locate_wbcs_in_fields_without_centres(tmp_path, bccd):
    fields = tmp_path / "fields"
    fields.mkdir()
    shutil.copy(bccd / "JPEGImages" / "BloodImage_00000.jpg", fields)
    fileio.write_image(fields / "blank.png", np.full((120, 160, 3), 235, np.uint8))
    out = datasets.build_dataset(fields, tmp_path / "loc", inference=True, locate=True, crop=200, size=32,
                                 progress=False)
    m = _manifest(out)
    assert (m["kind"] == "located").all() and len(m) >= 1
    box = fileio.read_cells(bccd).iloc[0]  # the WBC box of BloodImage_00000 (VOC centre)
    xy = m[["cell_x", "cell_y"]].astype(float).to_numpy()
    assert (np.hypot(xy[:, 0] - box["x"], xy[:, 1] - box["y"]) < 60).any(), (xy, box)
    rep = json.loads((out / "build_report.json").read_text())
    assert [Path(r["path"]).name for r in rep["no_wbc_located"]] == ["blank.png"]
    # without locate the same images are taken as single-cell crops
    out = datasets.build_dataset(fields, tmp_path / "single", inference=True, crop=200, size=32,
                                 progress=False)
    assert (_manifest(out)["kind"] == "single").all()
