"""Outputs never cost the user a file: --overwrite replaces only a command's own earlier output,
never an input; predict writes its CSV and JSON as one pair; an unwritable output is one line."""
import errno
import os
import random
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers import predictions_from_confusion, small_counts
from wbc_nnabla import cli, fileio, modelfile, outputs, predictions, predictor, report, scoring
from wbc_nnabla.classes import CLASSES6


def cells_and_predictions(tmp_path, name="pred.csv", seed=0):
    """``tmp/cells/cell_*.png`` (real PNGs) and a predictions CSV beside them pointing there (relative paths)."""
    df = predictions_from_confusion(small_counts(), n_smears=4, seed=seed, path_prefix="cells/")
    cells = tmp_path / "cells"
    cells.mkdir(exist_ok=True)
    for p in df["path"]:
        if not (tmp_path / p).exists():
            fileio.write_image(tmp_path / p, np.full((20, 20, 3), 200, np.uint8))
    csv = tmp_path / name
    df.to_csv(csv, index=False)
    return cells, csv


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- item 1: inputs are never deleted


def test_score_overwrite_never_deletes_the_cells_its_predictions_point_to(tmp_path, capsys):
    cells, csv = cells_and_predictions(tmp_path)
    before = snapshot(cells)
    assert cli.main(["score", str(csv), str(cells), "--overwrite", "--no-figures"]) == 2
    err = one_line_error(capsys)
    assert "is the input" in err and str(cells) in err
    assert snapshot(cells) == before
    with pytest.raises(fileio.SourceError, match="is the input"):
        report.write_score(scoring.score(csv), cells, overwrite=True)
    assert snapshot(cells) == before


def test_score_overwrite_never_deletes_cells_inside_an_earlier_score_output(tmp_path, capsys):
    """Even a folder carrying the score marker is kept when the predictions point into it."""
    out = tmp_path / "out"
    _, first = cells_and_predictions(tmp_path)
    assert cli.main(["score", str(first), str(out), "--no-figures"]) == 0
    assert outputs.marker_command(out) == "score"
    _, csv = cells_and_predictions(out, name="pred_in_out.csv")    # cells and CSV now inside OUT
    before = snapshot(out)
    assert cli.main(["score", str(csv), str(out), "--overwrite", "--no-figures"]) == 2
    assert "contains the input" in one_line_error(capsys)
    assert snapshot(out) == before


def test_compare_overwrite_never_deletes_the_cells_its_predictions_point_to(tmp_path, capsys):
    cells, a = cells_and_predictions(tmp_path, "a.csv", seed=1)
    _, b = cells_and_predictions(tmp_path, "b.csv", seed=1)
    before = snapshot(cells)
    assert cli.main(["compare", str(a), str(b), str(cells), "--overwrite", "--no-figures"]) == 2
    assert "is the input" in one_line_error(capsys)
    assert snapshot(cells) == before
    res = scoring.compare(scoring.score(a), scoring.score(b))
    with pytest.raises(fileio.SourceError, match="is the input"):
        report.write_compare(res, cells, overwrite=True)
    assert snapshot(cells) == before


# ----------------------------------------------------------------------------- item 2: only its own output


def test_score_overwrite_replaces_only_an_earlier_score_output(tmp_path, capsys):
    _, csv = cells_and_predictions(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("my notes")
    model = tmp_path / "model_A"
    (model / "checkpoints" / "epoch0003").mkdir(parents=True)
    for name in ("model.nnp", "model.h5", "checkpoints/epoch0003/params.h5"):
        (model / name).write_bytes(b"weights")
    for folder in (notes, model):
        before = snapshot(folder)
        assert cli.main(["score", str(csv), str(folder), "--overwrite", "--no-figures"]) == 2
        err = one_line_error(capsys)
        assert "not a `wbc-nnabla score` output" in err and str(folder) in err
        assert snapshot(folder) == before
    out = tmp_path / "score"
    assert cli.main(["score", str(csv), str(out), "--no-figures"]) == 0
    assert cli.main(["score", str(csv), str(out), "--no-figures"]) == 2            # no --overwrite
    assert "already exists" in one_line_error(capsys)
    (out / "old.txt").write_text("from the earlier run")
    assert cli.main(["score", str(csv), str(out), "--overwrite"]) == 0            # its own: replaced
    assert not (out / "old.txt").exists() and (out / "report.html").is_file()
    assert outputs.marker_command(out) == "score"
    cmp = tmp_path / "cmp"
    assert cli.main(["compare", str(csv), str(csv), str(cmp), "--no-figures", "--name-b", "B"]) == 0
    assert cli.main(["score", str(csv), str(cmp), "--overwrite", "--no-figures"]) == 2  # compare's, not score's
    assert "written by compare" in one_line_error(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["score", str(csv), str(empty), "--overwrite", "--no-figures"]) == 0
    afile = tmp_path / "afile.txt"
    afile.write_text("keep")
    assert cli.main(["score", str(csv), str(afile), "--overwrite", "--no-figures"]) == 2
    assert "is not a folder" in one_line_error(capsys) and afile.read_text() == "keep"


def test_compare_overwrite_replaces_only_an_earlier_compare_output(tmp_path, capsys):
    _, csv = cells_and_predictions(tmp_path)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("my notes")
    args = ["compare", str(csv), str(csv), "--name-b", "B", "--no-figures"]
    assert cli.main(args[:3] + [str(notes), "--overwrite"] + args[3:]) == 2
    assert "not a `wbc-nnabla compare` output" in one_line_error(capsys)
    assert (notes / "notes.txt").read_text() == "my notes"
    out = tmp_path / "cmp"
    assert cli.main(args[:3] + [str(out)] + args[3:]) == 0
    assert outputs.marker_command(out) == "compare"
    assert cli.main(args[:3] + [str(out), "--overwrite"] + args[3:]) == 0


def test_segment_replaces_only_an_earlier_segment_output(tmp_path, capsys):
    src = tmp_path / "in"
    fileio.write_image(src / "a.png", np.full((40, 40, 3), 200, np.uint8))
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.png").write_bytes(b"my own a.png")
    for flags in ([], ["--overwrite"]):
        assert cli.main(["segment", str(src), "--out", str(notes)] + flags) == 2
        assert str(notes) in one_line_error(capsys)
        assert (notes / "a.png").read_bytes() == b"my own a.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["segment", str(src), "--out", str(empty)]) == 0             # an empty folder is fine
    assert outputs.marker_command(empty) == "segment" and (empty / "a.png").is_file()
    assert cli.main(["segment", str(src), "--out", str(empty)]) == 2             # its own, but no --overwrite
    assert "already exists" in one_line_error(capsys)
    assert cli.main(["segment", str(src), "--out", str(empty), "--overwrite"]) == 0
    capsys.readouterr()


def test_cache_prune_removes_only_its_own_conversions(tmp_path):
    from wbc_nnabla import export
    mine = [tmp_path / f"m-{i:020x}-op13.onnx" for i in range(3)]
    theirs = tmp_path / "resnet-op13.onnx"
    for k, p in enumerate([theirs] + mine):                             # the user's file is the oldest
        p.write_bytes(b"x")
        os.utime(p, (k, k))
    export.prune_cache(tmp_path, keep=1, protect=mine[-1])
    assert theirs.exists() and mine[-1].exists() and not mine[0].exists() and not mine[1].exists()


# ----------------------------------------------------------------------------- predict without a model


@pytest.fixture
def stub_predict(monkeypatch):
    """``predict`` without a network: model ``X.nnp`` gives every cell the class X (a six-class name)."""
    def load_backend(model, backend="auto", threads=None, precision="auto", size=None, calibration=None, cells=None):
        return SimpleNamespace(name="stub", model_path=Path(model), class_names=list(CLASSES6),
                               meta=modelfile.ModelDescription({"arch": "resnet18", "input_size": 32}),
                               precision="fp32", int8=None)

    def predict_run(engine, cells, size=None, batch_size=16, expected_classes=None, progress=True, **kw):
        table = predictor.read_inputs(cells)
        probs = np.full((len(table), 6), 0.02)
        probs[:, CLASSES6.index(engine.model_path.stem)] = 0.9
        df = predictions.predictions_table(table, probs, CLASSES6)
        run = predictor.PredictRun("stub", 32, 32, batch_size, 0.01, "resnet18", "batch", [], "none", 1.0, "none",
                                   False, None)
        return predictor.Prediction(df, run)

    monkeypatch.setattr(predictor, "load_backend", load_backend)
    monkeypatch.setattr(predictor, "predict_run", predict_run)


@pytest.fixture
def cell_list(tmp_path, demo_dir):
    cells = fileio.read_cells(demo_dir).groupby("label").head(1)
    path = tmp_path / "cells.csv"
    cells[["path", "label"]].to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- item 3: existing files


def test_predict_refuses_an_existing_csv_or_json_without_overwrite(tmp_path, capsys, stub_predict, cell_list):
    out = tmp_path / "pred.csv"
    out.write_text("my earlier predictions")
    assert cli.main(["predict", "Lymph.nnp", str(cell_list), str(out), "--no-progress"]) == 2
    err = one_line_error(capsys)
    assert str(out) in err and "already exists" in err
    assert out.read_text() == "my earlier predictions"
    out.unlink()
    out.with_suffix(".json").write_text("my notes")                     # only the JSON beside it exists
    assert cli.main(["predict", "Lymph.nnp", str(cell_list), str(out), "--no-progress"]) == 2
    assert str(out.with_suffix(".json")) in one_line_error(capsys)
    assert not out.exists() and out.with_suffix(".json").read_text() == "my notes"
    assert cli.main(["predict", "Lymph.nnp", str(cell_list), str(out), "--no-progress", "--overwrite"]) == 0
    assert set(pd.read_csv(out)["pred6"]) == {"Lymph"}
    assert predictions.read_run_config(out)["model"] == "Lymph.nnp"
    capsys.readouterr()


def test_predict_never_replaces_its_model_or_cell_list(tmp_path, capsys, stub_predict, cell_list):
    model = tmp_path / "Lymph.csv"                                       # a model path ending in .csv
    model.write_text("weights")
    assert cli.main(["predict", str(model), str(cell_list), str(model), "--no-progress", "--overwrite"]) == 2
    assert "is the input" in one_line_error(capsys) and model.read_text() == "weights"


def test_write_predictions_refuses_an_existing_file_without_overwrite(tmp_path):
    df = predictions_from_confusion(small_counts(), n_smears=2)
    out = tmp_path / "pred.csv"
    out.write_text("mine")
    with pytest.raises(FileExistsError, match="pred.csv"):
        predictions.write_predictions(df, out)
    assert out.read_text() == "mine"
    predictions.write_predictions(df, out, overwrite=True)
    assert len(pd.read_csv(out)) == len(df)


def test_locate_refuses_an_existing_csv_without_overwrite(tmp_path, capsys):
    from test_cells import synthetic_field
    src = tmp_path / "fields"
    img, _ = synthetic_field()
    fileio.write_image(src / "f.png", img)
    out = tmp_path / "centres.csv"
    out.write_text("my centres")
    assert cli.main(["locate", str(src), "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert str(out) in err and "already exists" in err and out.read_text() == "my centres"
    assert cli.main(["locate", str(src), "--out", str(out), "--overwrite"]) == 0
    assert list(pd.read_csv(out).columns) == ["image", "x", "y"]
    capsys.readouterr()


# ----------------------------------------------------------------------------- item 11: CSV and JSON as a pair


def test_two_predict_runs_racing_leave_a_csv_and_json_of_the_same_run(tmp_path, stub_predict, cell_list,
                                                                     monkeypatch, capsys):
    """Random delays before every rename interleave the runs; the pair must still be one run's."""
    real_replace = os.replace
    rng = random.Random(0)

    def slow_replace(src, dst, *a, **k):
        time.sleep(rng.uniform(0, 0.15))  # on the unlocked writer, 3 of 10 trials mixed the runs
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", slow_replace)
    out = tmp_path / "pred.csv"
    for trial in range(10):
        codes = []
        runs = [threading.Thread(target=lambda m=m: codes.append(cli.main(
            ["predict", m, str(cell_list), str(out), "--no-progress", "--overwrite"]))) for m in ("Band.nnp", "Mono.nnp")]
        for t in runs:
            t.start()
        for t in runs:
            t.join()
        assert codes == [0, 0], trial
        run = predictions.read_run_config(out)                         # sha256 of the CSV matches
        assert set(pd.read_csv(out)["pred6"]) == {Path(run["model"]).stem}, trial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv", "pred.csv", "pred.json"]
    capsys.readouterr()


def test_read_run_config_refuses_a_json_of_another_csv(tmp_path):
    df = predictions_from_confusion(small_counts(), n_smears=2)
    out = tmp_path / "pred.csv"
    predictions.write_predictions(df, out, config={"model": "A.nnp"})
    assert predictions.read_run_config(out)["model"] == "A.nnp"
    predictions.write_predictions(df.iloc[:5], out, overwrite=True)     # the CSV alone replaced
    with pytest.raises(predictions.PredictionsError, match="different runs"):
        predictions.read_run_config(out)


# ----------------------------------------------------------------------------- item 12: unwritable outputs


def _command(name, tmp_path, out, cell_list):
    _, csv = cells_and_predictions(tmp_path)
    src = tmp_path / "imgs"
    fileio.write_image(src / "a.png", np.full((40, 40, 3), 200, np.uint8))
    return {
        "score": ["score", str(csv), str(out)],
        "compare": ["compare", str(csv), str(csv), str(out), "--name-b", "B"],
        "predict": ["predict", "Lymph.nnp", str(cell_list), str(out / "pred.csv"), "--no-progress"],
        "segment": ["segment", str(src), "--out", str(out)],
        "locate": ["locate", str(src), "--out", str(out / "centres.csv")],
    }[name]


@pytest.mark.parametrize("name", ["score", "compare", "predict", "segment", "locate"])
def test_unwritable_output_is_one_line_with_exit_status_1(name, tmp_path, capsys, stub_predict, cell_list):
    afile = tmp_path / "afile"
    afile.write_text("a regular file, so nothing can be created below it (even as root)")
    out = afile / "sub"
    argv = _command(name, tmp_path, out, cell_list)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(argv) == 1
    err = one_line_error(capsys)
    assert err.startswith(f"wbc-nnabla {name}: error: ") and str(afile) in err and "Not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # no partial output, no temporary


@pytest.mark.parametrize("name", ["score", "compare", "predict", "segment", "locate"])
def test_disk_full_while_writing_names_the_output_and_leaves_nothing(name, tmp_path, capsys, stub_predict,
                                                                     cell_list, monkeypatch):
    out = tmp_path / "out"
    argv = _command(name, tmp_path, out, cell_list)
    before = sorted(p.name for p in tmp_path.iterdir())

    def full(src, dst, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), src, None, dst)

    monkeypatch.setattr(os, "replace", full)
    assert cli.main(argv) == 1
    err = one_line_error(capsys)
    assert "No space left on device" in err and str(out) in err and ".tmp" not in err, err
    if name in ("predict", "locate"):
        assert sorted(p.name for p in out.iterdir()) == []             # the folder made for it, empty
        out.rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ----------------------------------------------------------------------------- io primitives used above


def test_output_of_temporary_names_the_output(tmp_path):
    assert outputs.output_of_temporary(tmp_path / ".pred.csv.123.ab_c9.tmp.csv") == tmp_path / "pred.csv"
    assert outputs.output_of_temporary(tmp_path / ".score.77.x1y2.tmp" / "summary.json") == tmp_path / "score" / "summary.json"
    assert outputs.output_of_temporary(tmp_path / "pred.csv") == tmp_path / "pred.csv"


def test_atomic_files_renames_together_and_refuses_a_file_written_meanwhile(tmp_path):
    a, b = tmp_path / "x.csv", tmp_path / "x.json"
    with outputs.atomic_files([a, b]) as (ta, tb):
        ta.write_text("1")
        tb.write_text("2")
        assert not a.exists() and not b.exists()
    assert (a.read_text(), b.read_text()) == ("1", "2")
    with pytest.raises(FileExistsError, match="x.csv"):
        with outputs.atomic_files([a, b]) as (ta, tb):
            ta.write_text("3")
    assert (a.read_text(), b.read_text()) == ("1", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csv", "x.json"]
    with pytest.raises(ValueError, match="not in one folder"):
        with outputs.atomic_files([a, tmp_path / "sub" / "y.json"]):
            pass


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with outputs.atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with outputs.atomic_dir(out) as tmp:
        (tmp / "done.txt").write_text("x")
    assert (out / "done.txt").exists()
    with pytest.raises(FileExistsError):
        with outputs.atomic_dir(out):
            pass


def test_check_not_inside(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(fileio.SourceError, match="inside the source"):
        outputs.check_not_inside(tmp_path / "src" / "out", [tmp_path / "src"])
    outputs.check_not_inside(tmp_path / "out", [tmp_path / "src"])


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """kill -9 during a write leaves .NAME.<pid>.XXXX.tmp; the next write of NAME removes it."""
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_dir = tmp_path / f".out.{dead}.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "half.png").write_text("x")
    stale_file = tmp_path / f".curve.csv.{dead}.xyz.tmp.csv"
    stale_file.write_text("x")
    live = tmp_path / f".out.{os.getpid()}.live.tmp"          # a running writer's: kept
    live.mkdir()
    other = tmp_path / ".unrelated.tmp"
    other.write_text("x")
    with outputs.atomic_dir(tmp_path / "out") as t:
        (t / "a.txt").write_text("a")
    outputs.write_text(tmp_path / "curve.csv", "x")
    assert not stale_dir.exists() and not stale_file.exists()
    assert live.exists() and other.exists() and (tmp_path / "out" / "a.txt").exists()


def test_check_output_replaces_only_its_own_folder_and_never_an_input(tmp_path):
    out = tmp_path / "score"
    outputs.check_output(out, "score", overwrite=False)                       # missing: fine
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        outputs.check_output(out, "score", overwrite=False)
    with pytest.raises(FileExistsError, match=r"not a `wbc-nnabla score` output .*no \.wbc_nnabla_output"):
        outputs.check_output(out, "score", overwrite=True)
    outputs.write_marker(out, "train")
    with pytest.raises(FileExistsError, match="written by train"):
        outputs.check_output(out, "score", overwrite=True)
    outputs.write_marker(out, "score")
    outputs.check_output(out, "score", overwrite=True)                        # its own: may be replaced
    (out / "cells").mkdir()
    with pytest.raises(fileio.SourceError, match="contains the input"):
        outputs.check_output(out, "score", overwrite=True, inputs=[out / "cells" / "a.png"])
    with pytest.raises(fileio.SourceError, match="is the input"):
        outputs.check_output(out, "score", overwrite=True, inputs=[out])
    with outputs.atomic_dir(tmp_path / "new", command="compare") as t:
        (t / "x").write_text("x")
    assert outputs.marker_command(tmp_path / "new") == "compare"
    f = tmp_path / "pred.csv"
    f.write_text("x")
    with pytest.raises(FileExistsError):
        outputs.check_output(f, "predict", overwrite=False)
    outputs.check_output(f, "predict", overwrite=True)


def test_check_output_folder_takes_a_new_or_empty_folder_without_overwrite(tmp_path):
    assert outputs.check_output_folder(tmp_path / "new", "segment", False) is False
    (tmp_path / "empty").mkdir()
    assert outputs.check_output_folder(tmp_path / "empty", "segment", False) is True      # replaced, nothing lost
    with outputs.atomic_dir(tmp_path / "mine", command="segment") as tmp:
        (tmp / "a.png").write_bytes(b"mask")
    with pytest.raises(FileExistsError, match="already exists"):
        outputs.check_output_folder(tmp_path / "mine", "segment", False)
    assert outputs.check_output_folder(tmp_path / "mine", "segment", True) is True
    with pytest.raises(FileExistsError, match="not a `wbc-nnabla gradcam` output"):
        outputs.check_output_folder(tmp_path / "mine", "gradcam", True)


def test_environment_records_the_cpus_vector_instructions():
    env = outputs.environment()
    assert env["cpu_simd"] in outputs.SIMD_LEVELS + ("unknown",)
    if Path("/proc/cpuinfo").exists() and " avx2 " in " " + Path("/proc/cpuinfo").read_text() + " ":
        assert env["cpu_simd"] in ("avx512f", "avx2")


def test_environment_records_the_cpu_model(tmp_path, monkeypatch):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                   "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f\n\n"
                   "processor\t: 1\ncpu family\t: 6\nmodel\t\t: 85\nmodel name\t: other\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\n\nHardware\t: BCM2835\n")
    read = outputs.cpuinfo
    monkeypatch.setattr(outputs, "cpuinfo", lambda: read(x86))
    assert outputs.cpu_model() == "AMD EPYC, family 25 model 17"      # the first processor's, not the second's
    assert outputs.cpu_simd() == "avx512f"
    assert outputs.environment()["cpu_model"] == "AMD EPYC, family 25 model 17"
    monkeypatch.setattr(outputs, "cpuinfo", lambda: read(arm))
    assert (outputs.cpu_model(), outputs.cpu_simd()) == ("BCM2835", "asimd")
    monkeypatch.setattr(outputs, "cpuinfo", lambda: read(tmp_path / "absent"))
    assert (outputs.cpu_model(), outputs.cpu_simd()) == ("unknown", "unknown")


def test_names_moved_from_fileio_still_work_with_a_warning():
    for name in sorted(fileio.MOVED_TO_OUTPUTS):
        assert name not in vars(fileio), name  # defined in outputs only
        with pytest.warns(DeprecationWarning, match=f"moved to wbc_nnabla.outputs.{name}"):
            assert getattr(fileio, name) is getattr(outputs, name)
    with pytest.raises(AttributeError, match="no attribute 'atomic_pathx'"):
        fileio.atomic_pathx
