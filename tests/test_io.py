"""Dataset I/O: image reading, the three cell-source readers, the NNC CSV writer, safe outputs."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbc_nnabla import io
from wbc_nnabla.classes import CLASSES6, LabelError


def _bgr(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- images


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".jpg", ".tif"])
def test_read_rgb_formats_return_rgb_uint8(tmp_path, suffix):
    bgr = _bgr()
    p = tmp_path / f"a{suffix}"
    cv2.imwrite(str(p), bgr)
    rgb = io.read_rgb(p)
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)
    if suffix != ".jpg":  # lossless: exact channel swap
        assert np.array_equal(rgb, bgr[:, :, ::-1])


def test_read_rgb_grayscale_rgba_16bit(tmp_path):
    gray = np.arange(200, dtype=np.uint8).reshape(10, 20)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    g = io.read_rgb(tmp_path / "g.png")
    assert g.shape == (10, 20, 3) and np.array_equal(g[:, :, 0], gray) and np.array_equal(g[:, :, 2], gray)

    bgra = np.dstack([_bgr(), np.full((20, 30), 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    a = io.read_rgb(tmp_path / "a.png")
    assert a.shape == (20, 30, 3) and np.array_equal(a, bgra[:, :, 2::-1])

    b16 = (np.arange(600, dtype=np.uint16).reshape(10, 20, 3) * 100)
    cv2.imwrite(str(tmp_path / "d.png"), b16)
    d = io.read_rgb(tmp_path / "d.png")
    assert d.dtype == np.uint8
    assert np.array_equal(d, np.round(b16[:, :, ::-1] / 257.0).astype(np.uint8))


def test_read_rgb_missing_file_names_it(tmp_path):
    with pytest.raises(io.ImageReadError, match="nope.jpg"):
        io.read_rgb(tmp_path / "nope.jpg")


@pytest.mark.parametrize("name, message", [("t.jpg", "truncated"), ("t.png", "t.png")])
def test_read_rgb_truncated_file(tmp_path, name, message):
    p = tmp_path / name
    cv2.imwrite(str(p), _bgr(64, 64))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(io.ImageReadError, match=message):
        io.read_rgb(p)


def test_read_rgb_not_an_image_and_empty(tmp_path):
    (tmp_path / "x.jpg").write_text("hello, not a JPEG")
    with pytest.raises(io.ImageReadError, match="not a readable image"):
        io.read_rgb(tmp_path / "x.jpg")
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(io.ImageReadError, match="empty"):
        io.read_rgb(tmp_path / "e.png")


def test_write_image_roundtrip(tmp_path):
    rgb = _bgr()
    io.write_image(tmp_path / "sub" / "o.png", rgb)
    assert np.array_equal(io.read_rgb(tmp_path / "sub" / "o.png"), rgb)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- readers


def _class_tree(root: Path, names=("BNE", "lymphocyte", "Mono")):
    for i, n in enumerate(names):
        (root / n).mkdir(parents=True)
        for j in range(2):
            cv2.imwrite(str(root / n / f"{j}.png"), _bgr(seed=i * 10 + j))
    return root


def test_read_class_folders(tmp_path):
    df = io.read_class_folders(_class_tree(tmp_path / "src"))
    assert list(df.columns) == list(io.CELL_COLUMNS)
    assert sorted(df["label"].unique()) == ["Band", "Lymph", "Mono"]
    assert len(df) == 6 and all(Path(p).is_absolute() for p in df["path"])


def test_read_class_folders_unknown_folder_is_named(tmp_path):
    _class_tree(tmp_path / "src", names=("Band", "Blasts"))
    with pytest.raises(LabelError, match="Blasts"):
        io.read_class_folders(tmp_path / "src")


def test_read_labels_csv_relative_paths_smear_xy(tmp_path):
    _class_tree(tmp_path / "src")
    (tmp_path / "src" / "cells.csv").write_text(
        "path,label,smear,x,y\nBNE/0.png,band neutrophil,S1,10,12\nMono/1.png,MO,S2,,\n")
    df = io.read_labels_csv(tmp_path / "src" / "cells.csv")
    assert list(df["label"]) == ["Band", "Mono"]
    assert list(df["smear"]) == ["S1", "S2"]
    assert df["x"].iloc[0] == 10 and np.isnan(df["x"].iloc[1])
    assert Path(df["path"].iloc[0]) == (tmp_path / "src" / "BNE" / "0.png").resolve()


def test_read_labels_csv_errors_name_file_and_row(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("path,label\na.png,Band\nb.png,Myelocyte\n")
    with pytest.raises(LabelError, match=r"c\.csv:3"):
        io.read_labels_csv(p)
    p.write_text("file,label\na.png,Band\n")
    with pytest.raises(io.SourceError, match="missing column 'path'"):
        io.read_labels_csv(p)
    p.write_text("path,label,x,y\na.png,Band,ten,3\n")
    with pytest.raises(io.SourceError, match=r"c\.csv:2.*column x"):
        io.read_labels_csv(p)


def test_nnc_csv_round_trip_and_nnabla_iterator(tmp_path):
    from nnabla.utils.data_iterator import data_iterator_csv_dataset

    imgs, labels = [], []
    for i in range(6):
        p = tmp_path / "images" / f"{i}.png"
        io.write_image(p, np.full((8, 8, 3), i * 40, np.uint8))
        imgs.append(p)
        labels.append(i)
    csv = io.write_nnc_csv(tmp_path / "train.csv", imgs, labels)
    assert csv.read_text().splitlines()[0] == "x:image,y:label"
    assert csv.read_text().splitlines()[1] == "images/0.png,0"

    df = io.read_nnc_csv(csv)
    assert list(df["label"]) == list(CLASSES6)
    assert io.read_cells(csv)["label"].tolist() == list(CLASSES6)

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
    with pytest.raises(io.SourceError, match=r"t\.csv:2.*class index 0-5"):
        io.read_nnc_csv(p)


def test_read_cells_dispatch(tmp_path, demo_dir):
    _class_tree(tmp_path / "tree")
    assert len(io.read_cells(tmp_path / "tree")) == 6
    demo = io.read_cells(demo_dir)  # folder holding labels.csv
    assert len(demo) == 120
    assert demo["label"].value_counts().to_dict() == {c: 20 for c in CLASSES6}
    assert all(os.path.isfile(p) for p in demo["path"])
    with pytest.raises(io.SourceError, match="no such file or folder"):
        io.read_cells(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.SourceError, match="no class sub-folders"):
        io.read_cells(tmp_path / "empty")


def test_shared_pbc6_reads(pbc6):
    df = io.read_cells(pbc6)
    assert len(df) == 2400
    assert df["label"].value_counts().to_dict() == {c: 400 for c in CLASSES6}


# ----------------------------------------------------------------------------- safe outputs


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with io.atomic_dir(out) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (out / "done.txt").exists()
    with pytest.raises(FileExistsError):
        with io.atomic_dir(out):
            pass


def test_check_not_inside(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(io.SourceError, match="inside the source"):
        io.check_not_inside(tmp_path / "src" / "out", [tmp_path / "src"])
    io.check_not_inside(tmp_path / "out", [tmp_path / "src"])


def test_demo_data_attribution_ships(demo_dir):
    assert (demo_dir / "ATTRIBUTION.md").read_text().count("Acevedo") >= 1
    assert (demo_dir / "LICENSE-CC-BY-4.0.md").exists()
