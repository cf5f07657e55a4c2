"""The end-to-end pipeline: split, presets and configuration, stage skipping, the report.

Every test of the session's tiny demo run (``conftest.tiny_demo_run``) is in this module, so that
``--dist loadfile`` builds it once (the domain check in its report, the notebook that resumes it).
"""
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import FULL_SPLIT, TINY_DEMO
from wbc_nnabla import classes, fileio, pipeline, predictions, recipe, scoring
from wbc_nnabla.cli import run as run_commands
from wbc_nnabla.sites import domain

ROOT = Path(__file__).resolve().parents[1]


def test_presets_and_overrides(tmp_path):
    paper = pipeline.make_config("paper")
    assert (paper.crop, paper.train_size, paper.infer_size) == (750, 480, 320)
    assert (paper.total_a, paper.total_b, paper.epochs_a, paper.epochs_b) == (2385, 3284, 300, 300)
    assert pipeline.make_config("recommended").infer_size == pipeline.make_config("recommended").train_size
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"epochs_a": 7, "seed": 3}))
    cfg = pipeline.make_config("demo", str(cfg_file), seed=5, epochs_b=None)
    assert (cfg.epochs_a, cfg.seed, cfg.epochs_b) == (7, 5, pipeline.PRESETS["demo"]["epochs_b"])
    with pytest.raises(ValueError, match="unknown setting.*epochz"):
        pipeline.make_config("demo", epochz=3)
    with pytest.raises(ValueError, match="unknown preset"):
        pipeline.make_config("fast")


def test_split_holds_out_stratified_pseudo_smears(tmp_path, demo_dir):
    cfg = pipeline.make_config("demo", pseudo_smears=3, cells_per_smear=12, seed=1)
    info = pipeline.split_source(demo_dir, tmp_path / "split", cfg)
    teacher = pd.read_csv(tmp_path / "split" / "teacher.csv")
    held = pd.read_csv(tmp_path / "split" / "inference.csv")
    assert len(held) == 36 and len(teacher) == 84
    assert not set(teacher["path"]) & set(held["path"])          # held-out cells never train
    assert held["label"].value_counts().to_dict() == {c: 6 for c in classes.CLASSES6}
    assert held["smear"].value_counts().to_dict() == {"P01": 12, "P02": 12, "P03": 12}
    assert "pseudo-smears" in info["note"]
    again = pipeline.split_source(demo_dir, tmp_path / "split2", cfg)
    assert pd.read_csv(tmp_path / "split2" / "inference.csv").equals(held)  # seeded
    assert again["n_inference"] == 36


def test_split_with_explicit_inference_set(tmp_path, demo_dir):
    cells = fileio.read_cells(demo_dir)
    cells.iloc[:12][["path", "label"]].assign(smear="S1").to_csv(tmp_path / "inf.csv", index=False)
    cells.iloc[12:][["path", "label"]].to_csv(tmp_path / "teacher.csv", index=False)
    info = pipeline.split_source(tmp_path / "teacher.csv", tmp_path / "split", pipeline.make_config("demo"),
                                 tmp_path / "inf.csv")
    assert info["n_inference"] == 12 and info["n_teacher"] == 108 and info["n_smears"] == 1


def test_split_errors(tmp_path, demo_dir):
    with pytest.raises(ValueError, match="cannot hold out"):
        pipeline.split_source(demo_dir, tmp_path / "s", pipeline.make_config("demo", pseudo_smears=20,
                                                                             cells_per_smear=10))


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tiny_demo_run, caplog):
    out, summary = tiny_demo_run
    for f in ("split/teacher.csv", "dataset_A/train.csv", "dataset_B/train.csv", "dataset_inference/cells.csv",
              "model_A/model.nnp", "model_B/model.nnp", "predictions_A.csv", "predictions_B.csv",
              "score_A/confusion6.csv", "score_B/summary.json", "compare/comparison.json",
              "report.html", "report.md", "summary.json"):
        assert (out / f).is_file(), f
    score_b = json.loads((out / "score_B" / "summary.json").read_text())
    assert summary["accuracy6_mean_B"] == pytest.approx(score_b["accuracy6_mean"])
    assert 0.0 <= summary["accuracy6_pooled_A"] <= summary["accuracy5_pooled_A"] <= 1.0
    assert summary["n_smears"] == pipeline.PRESETS["demo"]["pseudo_smears"]
    html = (out / "report.html").read_text()
    for heading in ("Learning curves", "Table 1 A1", "Table 1 B2", "Fig. 9", "Grad-CAM", "Judgement pending"):
        assert heading in html, heading
    assert "data:image/png;base64" in html
    # Model B starts from Model A (fine-tuning), recorded by the training stage.
    assert "init" in json.loads((out / "model_B" / "config.json").read_text())["initialisation"]
    # A second run skips every complete stage and gives the same numbers.
    before = (out / "predictions_B.csv").read_bytes()
    caplog.set_level("INFO")
    again = pipeline.demo(out, progress=False, **TINY_DEMO)
    assert "run: dataset" not in caplog.text and "skip (complete): dataset ①" in caplog.text
    assert (out / "predictions_B.csv").read_bytes() == before
    assert again["accuracy6_mean_B"] == summary["accuracy6_mean_B"]
    # Another configuration in the same folder is refused.
    with pytest.raises(ValueError, match="another configuration"):
        pipeline.demo(out, progress=False, epochs_a=2)


@pytest.mark.slow
def test_reproduce_report_has_the_domain_check(tiny_demo_run):
    """Both models of the demo store a domain reference; the report's lines and Model B's section say so."""
    out, _ = tiny_demo_run
    md = (out / "report.md").read_text()
    section_b = md.split("Domain-shift check (Model B's inference cells)")[1].split("\n## ")[0]
    for tag in ("A", "B"):
        s = scoring.score(out / f"predictions_{tag}.csv").summary
        assert s["domain_check"] in ("inside", "outside")                # the demo's models store a reference
        line = next(x for x in md.splitlines() if x.startswith(f"Model {tag}: 6 classes"))
        assert (domain.WARNING in line) == bool(s["smears_outside_domain"]), (tag, line)
        if tag == "B":
            assert (domain.WARNING in section_b) == bool(s["smears_outside_domain"])
            assert "share_outside" in section_b


@pytest.mark.slow
def test_notebook_executes(tmp_path, tiny_demo_run):
    """The notebook runs headless; it resumes the session's tiny demo run (same settings)."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    out, _ = tiny_demo_run
    nb = nbformat.read(ROOT / "examples" / "demo.ipynb", as_version=4)
    os.environ["WBC_TINY"] = "1"
    os.environ["WBC_NOTEBOOK_OUT"] = str(out)
    try:
        ExecutePreprocessor(timeout=900, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    finally:
        os.environ.pop("WBC_TINY")
        os.environ.pop("WBC_NOTEBOOK_OUT")
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # learning curves A/B, box plots, disagreements, risk-coverage...
    assert (out / "report.html").is_file()


def test_reproduce_flags_reach_the_config():
    """A reproduce flag (made from a Config field) overrides the preset."""
    from wbc_nnabla import cli

    args = cli.build_parser().parse_args(["reproduce", "SRC", "OUT", "--bn-recalibration", "0", "--seed", "4"])
    cfg = pipeline.make_config("paper", **run_commands.config_overrides(args))
    assert (cfg.bn_recalibration, cfg.seed) == (0, 4)
    assert pipeline.make_config("paper").bn_recalibration == recipe.BN_RECALIBRATION_IMAGES > 0


# ----------------------------------------------------------------------------- hostile inputs


class _TrainingStarted(Exception):
    """Raised instead of training: the stages before training ran for real."""


@pytest.fixture
def no_training(monkeypatch):
    """Stop ``reproduce`` where it would train; returns the model folders it tried to train."""
    from wbc_nnabla import training
    calls = []

    def stop(dataset, out, config=None, resume=False):
        calls.append(Path(out).name)
        raise _TrainingStarted(out)

    monkeypatch.setattr(training, "train", stop)
    return calls


def _cells_csv(path, cells: pd.DataFrame, smear: str = "") -> Path:
    """A path,label[,smear] CSV of ``cells`` (absolute paths)."""
    df = cells[["path", "label"]].copy()
    if smear:
        df["smear"] = smear
    df.to_csv(path, index=False)
    return path


def test_item4_split_dedupe_drops_repeats_and_no_held_out_cell_trains(tmp_path, demo_dir):
    cells = fileio.read_cells(demo_dir)
    doubled = _cells_csv(tmp_path / "doubled.csv", pd.concat([cells, cells.iloc[:30]], ignore_index=True))
    with pytest.raises(fileio.SourceError, match=r"doubled\.csv:2 and .*doubled\.csv:122 list the same cell"):
        pipeline.split_source(doubled, tmp_path / "split", pipeline.make_config("demo", **FULL_SPLIT))
    cfg = pipeline.make_config("demo", dedupe=True, **FULL_SPLIT)
    info = pipeline.split_source(doubled, tmp_path / "split", cfg)
    assert info["duplicates_dropped"] == 30 and "30 repeated cell(s) dropped" in info["note"]
    teacher = pd.read_csv(tmp_path / "split" / "teacher.csv")
    held = pd.read_csv(tmp_path / "split" / "inference.csv")
    assert len(teacher) + len(held) == 120 and not set(teacher["path"]) & set(held["path"])


def test_item4_cell_in_both_source_and_inference_set_is_an_error_naming_both_rows(tmp_path, demo_dir, no_training):
    cells = fileio.read_cells(demo_dir)
    source = _cells_csv(tmp_path / "teacher.csv", cells.iloc[10:])
    held = _cells_csv(tmp_path / "held.csv", cells.iloc[:12], smear="S1")   # rows 11-12 are teacher cells too
    with pytest.raises(fileio.SourceError, match=r"teacher\.csv:2 and .*held\.csv:12 list the same cell .*\(2 such"):
        pipeline.reproduce(source, tmp_path / "out", preset="demo", inference=held, progress=False)
    assert not (tmp_path / "out" / "split").exists()


def test_a_copy_of_a_teacher_image_in_the_inference_set_is_an_error(tmp_path, demo_dir, no_training):
    cells = fileio.read_cells(demo_dir)
    source = _cells_csv(tmp_path / "teacher.csv", cells.iloc[10:])
    copy = tmp_path / "lab" / "renamed.jpg"             # the same photo exported twice, under another name
    copy.parent.mkdir()
    copy.write_bytes(Path(cells["path"].iloc[15]).read_bytes())
    held_cells = pd.concat([cells.iloc[:5], cells.iloc[15:16].assign(path=str(copy))])
    held = _cells_csv(tmp_path / "held.csv", held_cells, smear="S1")
    with pytest.raises(fileio.SourceError, match=r"teacher\.csv:7 and .*held\.csv:7 list byte-identical copies "
                                                 r"of one image .*renamed\.jpg\) as a teacher cell .*\(1 such"):
        pipeline.reproduce(source, tmp_path / "out", preset="demo", inference=held, progress=False)
    assert not (tmp_path / "out").exists()


def test_item4_reproduce_and_build_dataset_report_repeats_in_one_line_and_dedupe(tmp_path, demo_dir, capsys,
                                                                               no_training):
    from wbc_nnabla import cli
    cells = fileio.read_cells(demo_dir)
    doubled = _cells_csv(tmp_path / "doubled.csv", pd.concat([cells, cells.iloc[:3]], ignore_index=True))
    for argv in (["reproduce", str(doubled), str(tmp_path / "run"), "--preset", "demo", "--quiet"],
                 ["build-dataset", str(doubled), str(tmp_path / "ds"), "--background", "keep", "--total", "12",
                  "--size", "32", "--crop", "200", "--no-progress"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "doubled.csv:2 and" in err[0] and "doubled.csv:122" in err[0], err
    assert cli.main(["build-dataset", str(doubled), str(tmp_path / "ds"), "--background", "keep", "--total", "12",
                     "--size", "32", "--crop", "200", "--no-progress", "--dedupe"]) == 0
    assert "dropped 3 repeated cell(s)" in capsys.readouterr().out
    assert json.loads((tmp_path / "ds" / "build_report.json").read_text())["duplicates_dropped"] == 3
    assert "3 repeated cell(s) of the source dropped" in (tmp_path / "ds" / "build_report.md").read_text()
    with pytest.raises(_TrainingStarted):  # the same folder takes the corrected run (item 14)
        cli.main(["reproduce", str(doubled), str(tmp_path / "run"), "--preset", "demo", "--quiet", "--dedupe",
                  "--train-size", "32", "--infer-size", "32", "--total-a", "60", "--total-b", "60",
                  "--pseudo-smears", "4", "--cells-per-smear", "10"])
    assert json.loads((tmp_path / "run" / "split" / "split.json").read_text())["duplicates_dropped"] == 3
    args = cli.build_parser().parse_args(["reproduce", "SRC", "OUT", "--dedupe", "--skip-bad"])
    cfg = pipeline.make_config("paper", **run_commands.config_overrides(args))
    assert cfg.dedupe and cfg.skip_bad
    assert not pipeline.make_config("paper", **run_commands.config_overrides(cli.build_parser().parse_args(
        ["reproduce", "SRC", "OUT"]))).dedupe


def test_item10_stage_records_say_when_a_stage_is_complete(tmp_path):
    out = tmp_path / "run"
    (out / "split").mkdir(parents=True)
    records = pipeline.StageRecords(out)
    stage = pipeline.STAGES["split"]
    made = records.made_from(stage, pipeline.make_config("demo"), {"source cells": "abc"})
    with pytest.raises(FileExistsError, match="no record of the split stage"):
        records.is_complete(stage, made)           # a folder no record accounts for is not ours
    (out / "split").rmdir()
    records.start(stage, made)
    (out / "split").mkdir()
    (out / "split" / "teacher.csv").write_text("path,label\n")
    (out / "split" / "inference.csv").write_text("path,label\n")
    assert not records.is_complete(stage, made) and records.started_from(stage, made)
    records.finish(stage)
    again = pipeline.StageRecords(out)             # read back from stages.json
    assert again.is_complete(stage, made)
    assert not again.is_complete(stage, dict(made, inputs={"source cells": "another source"}))
    (out / "split" / "teacher.csv").write_text("path,label\nx.png,Band\n")
    with pytest.raises(FileExistsError, match="teacher.csv: changed or removed since the split stage wrote it"):
        again.is_complete(stage, made)
    timings = {}
    with pipeline.timer("split", timings):
        pass
    assert timings == {"split": 0.0}


@pytest.mark.slow
def test_item10_copied_run_with_another_source_runs_every_stage_again(tiny_demo_run, tmp_path, caplog, no_training):
    out, _ = tiny_demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cells = fileio.read_cells(fileio.demo_data("small"))       # the tiny demo run's cells, one per class fewer
    other = _cells_csv(tmp_path / "other.csv", cells.drop(index=cells.groupby("label").head(1).index))
    caplog.set_level("INFO")
    with pytest.raises(_TrainingStarted):
        pipeline.reproduce(other, copy, preset="demo", progress=False, **TINY_DEMO)
    assert no_training == ["model_A"]
    assert "run: split" in caplog.text and "run: dataset ①" in caplog.text and "skip (complete)" not in caplog.text
    split = json.loads((copy / "split" / "split.json").read_text())
    assert split["source"] == str(other) and split["n_teacher"] + split["n_inference"] == len(cells) - 6


@pytest.mark.slow
def test_item10_changed_predictions_are_refused_not_scored(tiny_demo_run, tmp_path):
    out, _ = tiny_demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    preds = pd.read_csv(copy / "predictions_A.csv")
    preds["pred6"], preds["pred5"] = "Band", "Neutrophil"   # as if another run had left its predictions here
    preds.to_csv(copy / "predictions_A.csv", index=False)
    score_before = (copy / "score_A" / "summary.json").read_bytes()
    with pytest.raises(FileExistsError, match="predictions_A.csv: changed or removed since the predict A stage"):
        pipeline.demo(copy, progress=False, **TINY_DEMO)
    assert (copy / "score_A" / "summary.json").read_bytes() == score_before


def test_out_holding_a_users_files_is_refused_and_left_untouched(tmp_path, demo_dir):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "predictions_A.csv").write_text("path,label\n")   # e.g. predictions of another tool
    with pytest.raises(FileExistsError, match="not empty and not a reproduce output"):
        pipeline.reproduce(demo_dir, out, preset="demo", progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "predictions_A.csv"]
    assert (out / "notes.txt").read_text() == "my notes"
    (tmp_path / "empty").mkdir()
    cells = _cells_csv(tmp_path / "empty" / "cells.csv", fileio.read_cells(demo_dir))
    with pytest.raises(fileio.SourceError, match="inside the output folder"):
        pipeline.reproduce(cells, tmp_path / "empty", preset="demo", progress=False)


def test_item14_failed_run_folder_takes_a_corrected_run(tmp_path, demo_dir, no_training):
    cells = fileio.read_cells(demo_dir)
    doubled = _cells_csv(tmp_path / "doubled.csv", pd.concat([cells, cells.iloc[:1]], ignore_index=True))
    fixed = _cells_csv(tmp_path / "fixed.csv", cells)
    small = dict(train_size=32, infer_size=32, total_a=60, total_b=60, **FULL_SPLIT)
    with pytest.raises(fileio.SourceError, match="twice"):
        pipeline.reproduce(doubled, tmp_path / "run", preset="demo", progress=False, **small)
    with pytest.raises(_TrainingStarted):   # another crop: no stage had completed, so the folder is free
        pipeline.reproduce(fixed, tmp_path / "run", preset="demo", progress=False, crop=300, **small)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["crop"] == 300


def test_item15_bad_image_error_names_the_users_row_and_skip_bad_skips_it(tmp_path, demo_dir, capsys, no_training):
    from wbc_nnabla import cli
    cells = fileio.read_cells(demo_dir)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.jpg").write_bytes(b"")
    teacher = cells.iloc[12:][["path", "label"]]
    teacher = pd.concat([teacher.iloc[:5], pd.DataFrame({"path": [str(tmp_path / "images" / "broken.jpg")],
                                                         "label": ["Band"]}),
                         teacher.iloc[5:]], ignore_index=True)
    teacher.to_csv(tmp_path / "teacher.csv", index=False)     # broken.jpg on line 7
    held = _cells_csv(tmp_path / "held.csv", cells.iloc[:12], smear="S1")
    argv = ["reproduce", str(tmp_path / "teacher.csv"), str(tmp_path / "run"), "--preset", "demo", "--quiet",
            "--inference", str(held), "--train-size", "32", "--infer-size", "32", "--total-a", "60",
            "--total-b", "60"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"listed at {tmp_path / 'teacher.csv'}:7" in err and "--skip-bad" in err
    assert "split/teacher.csv" not in err and "Traceback" not in err
    with pytest.raises(_TrainingStarted):
        cli.main(argv + ["--skip-bad"])
    report = json.loads((tmp_path / "run" / "dataset_A" / "build_report.json").read_text())
    assert [s["source"] for s in report["skipped"]] == [f"{tmp_path / 'teacher.csv'}:7"]


def test_split_keeps_cell_centres_and_the_users_rows(tmp_path, demo_dir):
    cells = fileio.read_cells(demo_dir)
    fields = cells[["path", "label"]].assign(x=30.0, y=40.0)
    fields.to_csv(tmp_path / "fields.csv", index=False)
    pipeline.split_source(tmp_path / "fields.csv", tmp_path / "split", pipeline.make_config("demo", **FULL_SPLIT))
    teacher = fileio.read_cells(tmp_path / "split" / "teacher.csv")
    assert (teacher["x"] == 30.0).all() and (teacher["y"] == 40.0).all()
    assert teacher["source"].str.startswith(f"{tmp_path / 'fields.csv'}:").all()


@pytest.mark.slow
def test_item10_interrupted_training_resumes_only_from_the_same_inputs(tiny_demo_run, tmp_path, monkeypatch, caplog):
    from wbc_nnabla import training
    out, summary = tiny_demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    records = json.loads((copy / "stages.json").read_text())
    records["train_B"]["done"] = False                       # as if killed after its last checkpoint
    (copy / "stages.json").write_text(json.dumps(records))
    calls = []
    monkeypatch.setattr(training, "train", lambda dataset, o, config=None, resume=False: calls.append(resume))
    caplog.set_level("INFO")
    again = pipeline.demo(copy, progress=False, **TINY_DEMO)
    assert calls == [True] and "skip (complete): train A" in caplog.text
    assert "skip (complete): predict B" in caplog.text       # the same model.nnp: nothing after it runs again
    assert again["accuracy6_mean_B"] == summary["accuracy6_mean_B"]
    assert json.loads((copy / "stages.json").read_text())["train_B"]["done"]


@pytest.mark.slow
def test_a_predict_stage_stopped_before_its_record_resumes_and_writes_its_run_json(tiny_demo_run, tmp_path):
    out, summary = tiny_demo_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    config = predictions.read_run_config(copy / "predictions_B.csv")     # the CSV's run JSON, as `predict` writes
    assert config["model"].endswith("model.nnp") and config[predictions.CALIBRATION_KEY]["labels"]
    records = json.loads((copy / "stages.json").read_text())
    for tag in ("A", "B"):   # stopped after the CSVs were written, before the records were finished
        records[f"predict_{tag}"]["done"] = False
    (copy / "stages.json").write_text(json.dumps(records))
    again = pipeline.demo(copy, progress=False, **TINY_DEMO)
    assert again["accuracy6_mean_B"] == summary["accuracy6_mean_B"]
    assert json.loads((copy / "stages.json").read_text())["predict_B"]["done"] is True
    assert predictions.read_run_config(copy / "predictions_A.csv")["cells"].startswith(str(copy))
