"""The command line: --help, --version, one-line errors."""
import subprocess
import sys

import pytest

from wbc_nnabla import __version__, cli


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "demo" in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "wbc_nnabla.cli", "--version"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"wbc-nnabla {__version__}"


def test_cells_command_and_one_line_error(capsys, demo_dir, tmp_path):
    assert cli.main(["cells", str(demo_dir)]) == 0
    assert "120 cells" in capsys.readouterr().out
    (tmp_path / "bad.csv").write_text("path,label\na.png,Blast\n")
    assert cli.main(["cells", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert "Blast" in err and "bad.csv:2" in err and "Traceback" not in err


def test_cells_command_lists_byte_identical_copies(capsys, demo_dir, tmp_path):
    imgs = sorted(demo_dir.rglob("*.jpg"))[:3]
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(imgs[0].read_bytes())
    (tmp_path / "c.csv").write_text(f"path,label\n{imgs[0]},Band\n{imgs[1]},Lymph\n{imgs[2]},Mono\n{copy},Band\n")
    assert cli.main(["cells", str(tmp_path / "c.csv")]) == 0
    out = capsys.readouterr().out
    assert "4 cells" in out and "1 file(s) are byte-identical copies" in out
    assert "c.csv:2 (Band) = " in out and "c.csv:5 (Band)" in out and "c.csv:3" not in out
    assert cli.main(["cells", str(demo_dir)]) == 0
    assert "copies" not in capsys.readouterr().out


def test_docs_cli_reference_matches_help():
    from pathlib import Path
    doc = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
    assert doc.read_text() == cli.help_markdown(), (
        "docs/cli.md is out of date: regenerate with "
        "python -c 'from wbc_nnabla import cli; print(cli.help_markdown(), end=\"\")' > docs/cli.md")


def test_train_flags_build_the_settings(monkeypatch, capsys):
    """The paper's AdaBound and ImageAugmentation flags, and ``--set`` for the settings without a flag."""
    from wbc_nnabla import training
    from wbc_nnabla.recipe import AdaBoundConfig, Augmentation
    given = []

    def train(dataset, out, config, resume=False):
        given.append(config)
        return {"best": {"epoch": 1, "validation_error": 0.5}}

    monkeypatch.setattr(training, "train", train)
    assert cli.main(["train", "DS", "OUT", "--alpha", "0.01", "--angle", "10"]) == 0
    assert cli.main(["train", "DS", "OUT", "--angle", "10", "--set", "flip_lr=false", "--set", "flip_ud=false"]) == 0
    assert cli.main(["train", "DS", "OUT", "--set", "od_scale=0.2", "--set", "saturation=0.3", "--set",
                     "augmentation.log_gamma=0.1", "--set", "color_prob=0.5"]) == 0
    assert given[0].solver == AdaBoundConfig(alpha=0.01)
    assert given[0].augmentation == Augmentation(angle=10.0)
    assert given[1].solver == AdaBoundConfig()
    assert given[1].augmentation == Augmentation(angle=10.0, flip_lr=False, flip_ud=False)
    assert given[2].augmentation == Augmentation(od_scale=0.2, saturation=0.3, log_gamma=0.1, color_prob=0.5)
    assert given[2].augmentation.color and not given[0].augmentation.color
    assert "best epoch 1" in capsys.readouterr().out
    assert given[0].average_epochs == 0


def test_train_average_epochs_reaches_the_config_and_the_summary_line(monkeypatch, capsys):
    from wbc_nnabla import training
    given = []

    def train(dataset, out, config, resume=False):
        given.append(config)
        return {"best": {"epoch": 10, "validation_error": 0.5, "validation_misclassification": 0.2,
                         "averaged_epochs": [8, 10], "averaged_updates": 180}}

    monkeypatch.setattr(training, "train", train)
    assert cli.main(["train", "DS", "OUT", "--epochs", "10", "--set", "average_epochs=3"]) == 0
    assert given[0].average_epochs == 3
    assert "weights averaged over epochs 8-10: Validation Error 0.5000" in capsys.readouterr().out
