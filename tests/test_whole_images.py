"""Commands that read each image whole as one cell refuse cells given as centres in a field.

``predict``, ``adapt``, ``infomax``, ``self-train``, ``finetune``, ``train --style-cells`` and
``--stain-reference`` take every listed image as one cell. A VOC folder or a CSV with ``x,y`` lists
cells as centres in larger field images: read whole, the field would stand for each of its cells
(a silent, wrong result). They are refused with the row and the way out (``build-dataset
--inference``, which crops them); ``build-dataset`` itself still reads them.
"""
import shutil

import pandas as pd
import pytest

from helpers import VOC, demo_cells
from wbc_nnabla import fileio

nn = pytest.importorskip("nnabla")
from wbc_nnabla import cli, predictor  # noqa: E402


@pytest.fixture
def fields(tmp_path):
    """``fields.csv``: 24 demo cells (four per class), the second with a centre ``x, y`` in its image."""
    df = demo_cells(4)[["path", "label"]].copy()
    df["x"], df["y"] = "", ""
    df.loc[1, ["x", "y"]] = [40, 50]
    path = tmp_path / "fields.csv"
    df.to_csv(path, index=False)
    return path


def test_a_centre_is_refused_with_its_row_and_the_way_out(fields):
    with pytest.raises(fileio.SourceError) as e:
        fileio.read_cell_images(fields)
    msg = str(e.value)
    assert msg.startswith(f"{fields}:3: gives a cell centre (x 40, y 50)")     # row 3 of the file: header + 2
    assert "1 of 24 cells do" in msg and f"build-dataset {fields} OUT --inference" in msg and "OUT/cells.csv" in msg
    assert len(fileio.read_cells(fields)) == 24                                 # build-dataset still reads it


def test_whole_images_pass_and_a_cell_table_with_centres_is_refused(fields, tmp_path):
    whole = tmp_path / "whole.csv"
    pd.read_csv(fields)[["path", "label"]].to_csv(whole, index=False)
    assert len(fileio.read_cell_images(whole)) == 24
    assert len(fileio.read_cell_images(fileio.demo_data())) == len(fileio.read_cells(fileio.demo_data()))
    table = fileio.read_cells(fields)
    with pytest.raises(fileio.SourceError, match=r"^.*fields.csv:3: gives a cell centre"):
        predictor.read_inputs(table)
    with pytest.raises(fileio.SourceError, match=r"^cell table: cell 2: gives a cell centre"):
        predictor.read_inputs(table.drop(columns=["source"]))
    assert len(predictor.read_inputs(table.drop(index=1))) == 23


def test_a_voc_folder_is_refused(tmp_path):
    cell = demo_cells(1)["path"][0]
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    shutil.copy(cell, voc / "JPEGImages" / "f1.jpg")
    (voc / "Annotations" / "f1.xml").write_text(VOC)
    with pytest.raises(fileio.SourceError, match=r"f1.xml:1: gives a cell centre \(x 30, y 40\) in .*f1.jpg"):
        fileio.read_cell_images(voc)


@pytest.mark.parametrize("command", ["predict", "adapt", "finetune", "self-train", "infomax", "style-cells"])
def test_each_command_refuses_and_writes_nothing(command, fields, tiny_model, tiny_dataset, tmp_path, capsys):
    model, out = tiny_model / "model.nnp", tmp_path / "out.nnp"
    argv = {"predict": ["predict", model, fields, tmp_path / "out.csv"],
            "adapt": ["adapt", model, fields, out],
            "finetune": ["finetune", model, fields, out],
            "self-train": ["self-train", model, fields, out],
            "infomax": ["infomax", model, fields, out],
            "style-cells": ["train", tiny_dataset, tmp_path / "run", "--epochs", "1", "--size", "32", "--batch-size", "4",
                            "--pretrained", "none", "--no-progress", "--set", "fourier=0.5", "--set", f"style_cells={fields}"]}
    assert cli.main(list(map(str, argv[command]))) != 0
    assert f"{fields}:3: gives a cell centre" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fields.csv"]
