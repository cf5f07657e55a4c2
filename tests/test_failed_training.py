"""A training run that fails (a full disk, Ctrl-C) leaves a resumable run or nothing partial (issue 49, root
cause 6): a folder with a complete checkpoint is kept for --resume; without one, what the run wrote is
removed, and the folder too when the run made it. The hostile module's assertions apply: exit status,
one line naming the output, no traceback, inputs unchanged."""
import errno
import json

import pytest

pytest.importorskip("nnabla")

from test_hostile import _hashes, _one_line_error, _run  # noqa: E402
from wbc_nnabla import checkpoint, modelfile, outputs  # noqa: E402

pytestmark = pytest.mark.slow

FULL = "No space left on device"


def _train(ds, out, capsys, epochs=1, resume=False):
    return _run(["train", ds, out, "--size", "32", "--batch-size", "4", "--epochs", str(epochs), "--pretrained", "none",
                 "--no-progress", "--bn-recalibration", "4", "--set", "max_iterations=2", "--set", "train_eval_limit=4"]
                + (["--resume"] if resume else []), capsys)


@pytest.fixture
def disk_full(monkeypatch):
    """The first model export finds the disk full (raised as the file system does, naming the file)."""
    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, FULL, str(path))
    monkeypatch.setattr(modelfile, "save_nnp", full)


def test_disk_full_before_the_first_checkpoint_leaves_nothing(tiny_dataset, tmp_path, capsys, disk_full):
    before = _hashes(tiny_dataset)
    out = tmp_path / "new"
    rc, err = _train(tiny_dataset, out, capsys)
    _one_line_error(rc, err, f"{out / 'model.nnp'}: {FULL}; no epoch was complete: the partial run folder {out} "
                             f"was removed")
    assert not out.exists() and _hashes(tiny_dataset) == before
    mine = tmp_path / "mine"                          # a folder of the user's: only what the run wrote goes
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    rc, err = _train(tiny_dataset, mine, capsys)
    _one_line_error(rc, err, f"no epoch was complete: the partial run was removed from {mine}")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my notes\n"


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing(tiny_dataset, tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(modelfile, "save_nnp", interrupted)
    rc, err = _train(tiny_dataset, tmp_path / "run", capsys)
    assert rc == 130 and "Traceback" not in err and err.splitlines()[-1].startswith("wbc-nnabla train: interrupted")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_after_a_checkpoint_leaves_a_resumable_run(tiny_dataset, tmp_path, capsys, monkeypatch):
    real = checkpoint.save_checkpoint

    def full_at_epoch_2(out_dir, epoch, *a, **k):
        if epoch == 2:
            raise OSError(errno.ENOSPC, FULL, str(out_dir / "checkpoints" / "epoch0002" / "solver.h5"))
        return real(out_dir, epoch, *a, **k)

    monkeypatch.setattr(checkpoint, "save_checkpoint", full_at_epoch_2)
    out = tmp_path / "run"
    rc, err = _train(tiny_dataset, out, capsys, epochs=3)
    _one_line_error(rc, err, f"{FULL}; the last good checkpoint (checkpoints/epoch0001) is kept in {out}: continue "
                             f"with --resume")
    assert checkpoint.last_checkpoint(out) == "checkpoints/epoch0001" and (out / "model.nnp").is_file()
    monkeypatch.setattr(checkpoint, "save_checkpoint", real)
    assert _train(tiny_dataset, out, capsys, epochs=3, resume=True)[0] == 0
    assert [r["epoch"] for r in json.loads((out / "config.json").read_text())["history"]] == [1, 2, 3]


def test_a_killed_runs_folder_is_taken_and_a_users_is_refused(tiny_dataset, tmp_path, capsys):
    """A run killed before its first checkpoint (kill -9: no handler runs) left its marked folder: the next run
    takes it. The same files without train's marker are a user's: refused, untouched."""
    killed = tmp_path / "killed"
    killed.mkdir()
    outputs.write_marker(killed, "train")
    (killed / "config.json").write_text("{}\n")
    (killed / "monitor").mkdir()
    assert _train(tiny_dataset, killed, capsys)[0] == 0
    assert checkpoint.last_checkpoint(killed) == "checkpoints/epoch0001"
    users = tmp_path / "users"
    users.mkdir()
    (users / "config.json").write_text('{"mine": true}\n')
    before = _hashes(users)
    rc, err = _train(tiny_dataset, users, capsys)
    _one_line_error(rc, err, f"{users}: holds config.json, which a training run writes, and is not a train output")
    assert _hashes(users) == before and [p.name for p in users.iterdir()] == ["config.json"]
