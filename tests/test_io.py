"""Dataset I/O: image reading, the cell-source readers, the NNC CSV writer (safe outputs: test_outputs)."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc_nnabla import fileio
from wbc_nnabla.classes import CLASSES6, LabelError


def _bgr(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".tif"])
def test_read_rgb_formats_return_rgb_uint8(tmp_path, suffix):
    bgr = _bgr()
    p = tmp_path / f"a{suffix}"
    cv2.imwrite(str(p), bgr)
    rgb = fileio.read_rgb(p)
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    if suffix != ".jpg":  # lossless: exact channel swap
        assert np.array_equal(rgb, bgr[:, :, ::-1])


def test_read_rgb_grayscale_rgba_16bit(tmp_path):
    gray = np.arange(320, dtype=np.uint8).reshape(16, 20)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    g = fileio.read_rgb(tmp_path / "g.png")
    assert g.shape == (16, 20, 3) and np.array_equal(g[:, :, 0], gray) and np.array_equal(g[:, :, 2], gray)

    bgra = np.dstack([_bgr(), np.full((20, 30), 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    a = fileio.read_rgb(tmp_path / "a.png")
    assert a.shape == (20, 30, 3) and np.array_equal(a, bgra[:, :, 2::-1])

    b16 = (np.arange(960, dtype=np.uint16).reshape(16, 20, 3) * 60)
    cv2.imwrite(str(tmp_path / "d.png"), b16)
    d = fileio.read_rgb(tmp_path / "d.png")
    assert d.dtype == np.uint8
    assert np.array_equal(d, np.round(b16[:, :, ::-1] / 257.0).astype(np.uint8))


def test_read_rgb_missing_file_names_it(tmp_path):
    with pytest.raises(fileio.ImageReadError, match="nope.jpg"):
        fileio.read_rgb(tmp_path / "nope.jpg")


@pytest.mark.parametrize("name, message", [("t.jpg", "truncated"), ("t.png", "t.png")])
def test_read_rgb_truncated_file(tmp_path, name, message):
    p = tmp_path / name
    cv2.imwrite(str(p), _bgr(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(fileio.ImageReadError, match=message):
        fileio.read_rgb(p)


def test_read_rgb_not_an_image_and_empty(tmp_path):
    (tmp_path / "x.jpg").write_text("hello, not a JPEG")
    with pytest.raises(fileio.ImageReadError, match="not a readable image"):
        fileio.read_rgb(tmp_path / "x.jpg")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(fileio.ImageReadError, match="empty"):
        fileio.read_rgb(tmp_path / "e.png")


def test_write_image_roundtrip(tmp_path):
    rgb = _bgr()
    fileio.write_image(tmp_path / "sub" / "o.png", rgb)
    assert np.array_equal(fileio.read_rgb(tmp_path / "sub" / "o.png"), rgb)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- readers


def _class_tree(root: Path, names=("BNE", "lymphocyte", "Mono")):
    for i, n in enumerate(names):
        (root / n).mkdir(parents=True)
        for j in range(2):
            cv2.imwrite(str(root / n / f"{j}.png"), _bgr(seed=i * 10 + j))
    return root


def test_read_class_folders(tmp_path):
    df = fileio.read_class_folders(_class_tree(tmp_path / "src"))
    assert list(df.columns) == list(fileio.CELL_COLUMNS)
    assert sorted(df["label"].unique()) == ["Band", "Lymph", "Mono"]
    assert len(df) == 6 and all(Path(p).is_absolute() for p in df["path"])


def test_read_class_folders_unknown_folder_is_named(tmp_path):
    _class_tree(tmp_path / "src", names=("Band", "Blasts"))
    with pytest.raises(LabelError, match="Blasts"):
        fileio.read_class_folders(tmp_path / "src")


def test_read_labels_csv_relative_paths_smear_xy(tmp_path):
    _class_tree(tmp_path / "src")
    (tmp_path / "src" / "cells.csv").write_text(
        "path,label,smear,x,y\nBNE/0.png,band neutrophil,S1,10,12\nMono/1.png,MO,S2,,\n")
    df = fileio.read_labels_csv(tmp_path / "src" / "cells.csv")
    assert list(df["label"]) == ["Band", "Mono"]
    assert list(df["smear"]) == ["S1", "S2"]
    assert df["x"].iloc[0] == 10 and np.isnan(df["x"].iloc[1])
    assert Path(df["path"].iloc[0]) == (tmp_path / "src" / "BNE" / "0.png").resolve()


def test_read_labels_csv_errors_name_file_and_row(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("path,label\na.png,Band\nb.png,Myelocyte\n")
    with pytest.raises(LabelError, match=r"c\.csv:3"):
        fileio.read_labels_csv(p)
    p.write_text("file,label\na.png,Band\n")
    with pytest.raises(fileio.SourceError, match="missing column 'path'"):
        fileio.read_labels_csv(p)
    p.write_text("path,label,x,y\na.png,Band,ten,3\n")
    with pytest.raises(fileio.SourceError, match=r"c\.csv:2.*column x"):
        fileio.read_labels_csv(p)


def test_nnc_csv_round_trip_and_nnabla_iterator(tmp_path):
    from nnabla.utils.data_iterator import data_iterator_csv_dataset

    imgs, labels = [], []
    for i in range(6):
        p = tmp_path / "images" / f"{i}.png"
        fileio.write_image(p, np.full((8, 8, 3), i * 40, np.uint8))
        imgs.append(p)
        labels.append(i)
    csv = fileio.write_nnc_csv(tmp_path / "train.csv", imgs, labels)
    assert csv.read_text().splitlines()[0] == "x:image,y:label"
    assert csv.read_text().splitlines()[1] == "images/0.png,0"

    df = fileio.read_nnc_csv(csv)
    assert list(df["label"]) == list(CLASSES6)
    assert fileio.read_cells(csv)["label"].tolist() == list(CLASSES6)

    it = data_iterator_csv_dataset(str(csv), batch_size=6, shuffle=False, normalize=False)
    try:
        x, y = it.next()
    finally:
        it.close()
    assert x.shape == (6, 3, 8, 8)
    assert y.reshape(-1).tolist() == labels
    assert [int(v) for v in x[:, 0, 0, 0]] == [i * 40 for i in range(6)]


def test_read_nnc_csv_bad_index(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("x:image,y:label\na.png,9\n")
    with pytest.raises(fileio.SourceError, match=r"t\.csv:2.*class index 0-5"):
        fileio.read_nnc_csv(p)


def test_read_cells_dispatch(tmp_path, demo_dir):
    _class_tree(tmp_path / "tree")
    assert len(fileio.read_cells(tmp_path / "tree")) == 6
    demo = fileio.read_cells(demo_dir)  # folder holding labels.csv
    assert len(demo) == 120
    assert demo["label"].value_counts().to_dict() == {c: 20 for c in CLASSES6}
    assert all(os.path.isfile(p) for p in demo["path"])
    with pytest.raises(fileio.SourceError, match="no such file or folder"):
        fileio.read_cells(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(fileio.SourceError, match="no images"):
        fileio.read_cells(tmp_path / "empty")


def test_shared_pbc6_reads(pbc6):
    df = fileio.read_cells(pbc6)
    assert len(df) == 2400
    assert df["label"].value_counts().to_dict() == {c: 400 for c in CLASSES6}


# ----------------------------------------------------------------------------- safe outputs


def test_demo_data_attribution_ships(demo_dir):
    assert (demo_dir / "ATTRIBUTION.md").read_text().count("Acevedo") >= 1
    assert (demo_dir / "LICENSE-CC-BY-4.0.md").exists()


# ----------------------------------------------------------------------------- hostile inputs


def test_jpeg_cut_with_end_marker_put_back_is_corrupt(tmp_path, demo_dir):
    """A JPEG cut to a third with FF D9 re-appended decodes two-thirds grey: refused, file named."""
    data = next(demo_dir.rglob("*.jpg")).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3] + b"\xff\xd9")
    with pytest.raises(fileio.ImageReadError, match=r"cut\.jpg: corrupt JPEG data .*premature end"):
        fileio.read_rgb(tmp_path / "cut.jpg")
    (tmp_path / "ok.jpg").write_bytes(data)
    assert fileio.read_rgb(tmp_path / "ok.jpg").shape[2] == 3


@pytest.mark.parametrize("shape", [(1, 1), (15, 200), (200, 8)])
def test_images_below_the_minimum_side_are_refused(tmp_path, shape):
    p = tmp_path / "tiny.png"
    cv2.imwrite(str(p), np.full(shape + (3,), 200, np.uint8))
    with pytest.raises(fileio.ImageReadError, match=r"tiny\.png: image too small .*at least 16 px"):
        fileio.read_rgb(p)
    assert fileio.read_rgb(p, min_side=1).shape == shape + (3,)


def _labels_csv(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return path


def test_duplicate_cells_are_an_error_naming_both_rows(tmp_path, demo_dir):
    imgs = sorted(demo_dir.rglob("*.jpg"))[:3]
    csv = _labels_csv(tmp_path / "dup.csv", [(imgs[0], "Band"), (imgs[1], "Lymph"), (imgs[0], "Band")])
    with pytest.raises(fileio.SourceError, match=r"dup\.csv:2 and .*dup\.csv:4 list the same cell .* twice.*--dedupe"):
        fileio.read_cells(csv)
    t = fileio.read_cells(csv, dedupe=True)
    assert len(t) == 2 and t.attrs["duplicates_dropped"] == 1
    # the same image under another spelling of its path is the same cell
    other = tmp_path / "sub"
    other.mkdir()
    rel = os.path.relpath(imgs[0], other)
    csv2 = _labels_csv(other / "rel.csv", [(imgs[0], "Band"), (rel, "Band")])
    with pytest.raises(fileio.SourceError, match="twice"):
        fileio.read_cells(csv2)
    conflict = _labels_csv(tmp_path / "two_labels.csv", [(imgs[0], "Band"), (imgs[0], "Segment")])
    for dedupe in (False, True):
        with pytest.raises(fileio.SourceError, match=r"different labels.*Band.*Segment"):
            fileio.read_cells(conflict, dedupe=dedupe)


def test_a_copy_under_another_name_is_a_repeat_when_read_by_content(tmp_path, demo_dir):
    imgs = sorted(demo_dir.rglob("*.jpg"))[:2]
    copy = tmp_path / "copies" / "renamed.jpg"
    copy.parent.mkdir()
    copy.write_bytes(imgs[0].read_bytes())
    csv = _labels_csv(tmp_path / "copy.csv", [(imgs[0], "Band"), (imgs[1], "Lymph"), (copy, "Band")])
    assert len(fileio.read_cells(csv)) == 3                      # by path: three files, three cells
    with pytest.raises(fileio.SourceError,
                       match=r"copy\.csv:2 and .*copy\.csv:4 list byte-identical copies of one image .*renamed\.jpg.*--dedupe"):
        fileio.read_cells(csv, by_content=True)
    t = fileio.read_cells(csv, by_content=True, dedupe=True)
    assert t["path"].tolist() == [str(imgs[0]), str(imgs[1])] and t.attrs["duplicates_dropped"] == 1
    conflict = _labels_csv(tmp_path / "conflict.csv", [(imgs[0], "Band"), (copy, "Segment")])
    with pytest.raises(fileio.SourceError, match=r"byte-identical copies .*different labels.*Band.*Segment"):
        fileio.read_cells(conflict, by_content=True, dedupe=True)
    with pytest.raises(fileio.SourceError, match=r"twice.*; remove the repeat$"):
        fileio.read_cells(csv, by_content=True, dedupe_flag=None)  # a command without --dedupe does not offer it


def test_content_keys_read_only_files_of_a_shared_size(tmp_path):
    a, b, c, d = (tmp_path / n for n in ("a.bin", "b.bin", "c.bin", "d.bin"))
    a.write_bytes(b"12345")
    b.write_bytes(b"12345")            # a's copy
    c.write_bytes(b"12346")            # a's size, other bytes
    d.write_bytes(b"123")              # a size nobody shares: not read
    missing = tmp_path / "missing.bin"
    keys = fileio.content_keys([str(a), str(b), str(c), str(d), str(missing)])
    assert keys[0] == keys[1] and keys[0].startswith("sha256:") and keys[2] not in (keys[0], keys[3])
    assert keys[3] == str(d) and keys[4] == str(missing)


def test_nnc_folder_with_a_cell_in_both_splits_is_refused(tmp_path, demo_dir):
    imgs = sorted(demo_dir.rglob("*.jpg"))[:3]
    fileio.write_nnc_csv(tmp_path / "train.csv", imgs[:2], [0, 1])
    fileio.write_nnc_csv(tmp_path / "valid.csv", imgs[1:], [1, 2])
    with pytest.raises(fileio.SourceError, match=r"train\.csv:3 and .*valid\.csv:2 list the same cell"):
        fileio.read_cells(tmp_path)


def test_source_kind_is_one_rule(tmp_path, demo_dir):
    assert fileio.source_kind(demo_dir) == "labels-folder"
    assert fileio.source_kind(demo_dir / "labels.csv") == "labels-csv"
    _class_tree(tmp_path / "tree")
    assert fileio.source_kind(tmp_path / "tree") == "class-folders"
    smears = tmp_path / "smears"
    for s in ("S01", "S02"):
        (smears / s).mkdir(parents=True)
        cv2.imwrite(str(smears / s / "a.png"), _bgr())
    assert fileio.source_kind(smears) == "smear-folders"
    t = fileio.read_cells(smears)
    assert sorted(t["smear"]) == ["S01", "S02"] and (t["label"] == "").all()
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "a.png"), _bgr())
    assert fileio.source_kind(flat) == "image-folder"
    (flat / "Band").mkdir()
    cv2.imwrite(str(flat / "Band" / "b.png"), _bgr())
    with pytest.raises(fileio.SourceError, match="holds images and also sub-folders"):
        fileio.read_cells(flat)
    (smears / "Band").mkdir()
    cv2.imwrite(str(smears / "Band" / "b.png"), _bgr())
    with pytest.raises(LabelError, match="'S01' is not a class name"):
        fileio.read_cells(smears)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(fileio.SourceError, match="must be a .csv"):
        fileio.read_cells(tmp_path / "notes.txt")


def test_image_files_expands_folders_and_names_what_is_missing(tmp_path):
    fileio.write_image(tmp_path / "a" / "x.png", np.full((40, 40, 3), 200, np.uint8))
    fileio.write_image(tmp_path / "a" / "sub" / "y.jpg", np.full((40, 40, 3), 200, np.uint8))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    single = tmp_path / "z.png"
    fileio.write_image(single, np.full((40, 40, 3), 200, np.uint8))
    assert fileio.image_files([tmp_path / "a", single]) == [tmp_path / "a" / "sub" / "y.jpg", tmp_path / "a" / "x.png",
                                                        single]
    assert fileio.image_files([str(tmp_path / "a")], recursive=False) == [tmp_path / "a" / "x.png"]
    assert fileio.image_folders([tmp_path / "a", single]) == [tmp_path / "a", tmp_path]
    (tmp_path / "empty").mkdir()
    with pytest.raises(fileio.SourceError, match="empty: folder holds no images"):
        fileio.image_files([tmp_path / "empty"])
    fileio.write_image(tmp_path / "b" / "sub" / "y.png", np.full((40, 40, 3), 200, np.uint8))
    with pytest.raises(fileio.SourceError, match="b: folder holds no images"):
        fileio.image_files([tmp_path / "b"], recursive=False)                 # its images are in a sub-folder
    with pytest.raises(fileio.SourceError, match="no such image file or folder"):
        fileio.image_files([tmp_path / "missing.png"])


