"""One settings system: declared once, validated by one function, read from recipe files, a run's
``config.json``, ``--config`` and ``--set``, in layers under the command-line flags."""
import argparse
import dataclasses
import json

import numpy as np
import pytest

from wbc_nnabla import cli, recipe, settings
from wbc_nnabla.cli import train as train_cli
from wbc_nnabla.errors import InputError
from wbc_nnabla.recipe import AdaBoundConfig, Augmentation, TrainConfig, TrainingError


def _train_args(*argv) -> argparse.Namespace:
    return cli.build_parser().parse_args(["train", "DS", "OUT", *argv])


def test_the_paper_recipe_file_is_the_defaults_and_robust_extends_it():
    assert recipe.recipe_config("paper") == TrainConfig()
    robust = recipe.recipe_config("robust")
    assert robust.augmentation.hue == 30.0 and robust.augmentation.max_scale == 1.6
    assert dataclasses.replace(robust, augmentation=Augmentation()) == TrainConfig()   # only the augmentation


def test_layers_flags_over_set_over_config_over_recipe(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"epochs": 7, "norm": "group", "augmentation": {"hue": 5.0, "angle": 10.0}}))
    cfg = train_cli.train_settings(_train_args("--recipe", "robust", "--config", str(cfg_file), "--set", "hue=9",
                                               "--set", "solver.schedule=cosine", "--angle", "20", "--alpha", "0.01"))
    assert (cfg.epochs, cfg.norm, cfg.solver.schedule, cfg.solver.alpha) == (7, "group", "cosine", 0.01)
    assert (cfg.augmentation.hue, cfg.augmentation.angle) == (9.0, 20.0)     # --set over --config, flag over both
    assert cfg.augmentation.od_scale == 0.4                                 # the recipe under them all
    assert cfg.site_record and cfg.progress


def test_set_and_config_refuse_by_name(tmp_path):
    with pytest.raises(InputError, match="--set flavour: is no setting"):
        train_cli.train_settings(_train_args("--set", "flavour=1"))
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        train_cli.train_settings(_train_args("--set", "hue"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(InputError, match=r"bad\.json: epochs must be an integer, got 'many'"):
        train_cli.train_settings(_train_args("--config", str(bad)))
    bad.write_text(json.dumps({"solver": {"alpah": 1}}))
    with pytest.raises(InputError, match=r"bad\.json: solver: unknown setting\(s\) alpah"):
        train_cli.train_settings(_train_args("--config", str(bad)))
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="expected a JSON object"):
        train_cli.train_settings(_train_args("--config", str(bad)))


def test_one_validator_names_the_setting_and_its_range():
    with pytest.raises(TrainingError, match=r"^batch_size must be >= 1, got 0$"):
        TrainConfig(batch_size=0).validate()
    with pytest.raises(TrainingError, match=r"^size must be in \[32, 2048\] \(pixels\), got 16$"):
        TrainConfig(size=16).validate()
    with pytest.raises(TrainingError, match=r"^norm 'x': choose one of batch, group, ibn$"):
        TrainConfig(norm="x").validate()
    with pytest.raises(TrainingError, match=r"^beta2 must be in \[0, 1\), got 1.0$"):
        TrainConfig(solver=AdaBoundConfig(beta2=1.0)).validate()


def test_every_config_key_is_documented():
    """Each setting without a flag is listed in docs/training.md's "Settings" table (or its group is)."""
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    table = doc[doc.index("## Settings"):doc.index("## Input")]
    keys = [path[-1] for path, f in settings.leaf_paths(TrainConfig).items() if not settings.declared(f).flag]
    assert keys and [k for k in keys if f"`{k}`" not in table and f", `{k}`" not in table and f"{k}`" not in table] == []


def test_train_shows_the_papers_flags_only():
    text = cli.build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    options = [line for line in text.splitlines() if line.startswith("  -")]
    assert len(options) <= 25, options
    assert "--norm" not in text and "--mixup" not in text and "--set KEY=VALUE" in text


@pytest.mark.slow
def test_a_runs_config_json_reproduces_it_bit_identically(tiny_dataset, tmp_path):
    """``train DS OUT --config A/config.json`` trains the same parameters, bit for bit."""
    pytest.importorskip("nnabla")
    from wbc_nnabla import modelfile
    first = ["train", str(tiny_dataset), str(tmp_path / "A"), "--size", "32", "--epochs", "2", "--batch-size", "4",
             "--pretrained", "none", "--seed", "5", "--set", "max_iterations=2", "--set", "hue=10",
             "--set", "label_smoothing=0.1", "--no-progress"]
    assert cli.main(first) == 0
    again = ["train", str(tiny_dataset), str(tmp_path / "B"), "--config", str(tmp_path / "A" / "config.json"),
             "--no-progress"]
    assert cli.main(again) == 0
    a, b = (modelfile.load_parameters(tmp_path / run / "model.h5") for run in ("A", "B"))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    ca, cb = (json.loads((tmp_path / run / "config.json").read_text())["config"] for run in ("A", "B"))
    assert {k: v for k, v in ca.items() if k != "out_dir"} == {k: v for k, v in cb.items() if k != "out_dir"}
