"""The end-to-end pipeline: split, presets and configuration, stage skipping, the report."""
import json

import pandas as pd
import pytest

from conftest import TINY_DEMO
from wbc_nnabla import classes, io, pipeline


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
    cells = io.read_cells(demo_dir)
    cells.iloc[:12][["path", "label"]].assign(smear="S1").to_csv(tmp_path / "inf.csv", index=False)
    info = pipeline.split_source(demo_dir, tmp_path / "split", pipeline.make_config("demo"), tmp_path / "inf.csv")
    assert info["n_inference"] == 12 and info["n_teacher"] == 120 and info["n_smears"] == 1


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


def test_reproduce_flags_reach_the_config():
    """A reproduce flag (made from a Config field) overrides the preset."""
    from wbc_nnabla import cli

    args = cli.build_parser().parse_args(["reproduce", "SRC", "OUT", "--bn-recalibration", "0", "--seed", "4"])
    cfg = pipeline.make_config("paper", **cli._overrides(args))
    assert (cfg.bn_recalibration, cfg.seed) == (0, 4)
    assert pipeline.make_config("paper").bn_recalibration == pipeline.BN_RECALIBRATION_IMAGES > 0
