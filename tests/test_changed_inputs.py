"""A changed input is never missed (issue 49, root cause 4): a stage's record covers the bytes of every file
it reads, images included, and `train --resume` refuses a dataset whose files changed since the checkpoint.

The hostile module's assertions (exit status, one line naming the file, no traceback, inputs unchanged,
nothing partial) on the new inputs: a label edited in place in a reproduce source, pixels changed in
place, a dataset rebuilt in place under a resumed run. Training inside reproduce is replaced by a copy
of the session's tiny model, so what runs again is seen without training.
"""
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nnabla")

from test_hostile import _hashes, _no_temporaries, _one_line_error, _run  # noqa: E402
from wbc_nnabla import classes, fileio, pipeline, stages, training  # noqa: E402

pytestmark = pytest.mark.slow


def test_a_stage_input_is_digested_when_out_is_given_relative_to_the_working_folder(tmp_path, monkeypatch):
    """`reproduce SRC rep`: every later stage recorded its input as a null hash (OUT joined twice)."""
    monkeypatch.chdir(tmp_path)
    out = Path("rep")
    (out / "split").mkdir(parents=True)
    (out / "split" / "teacher.csv").write_text("path,label\n")
    run = pipeline.Run(out, pipeline.make_config("demo"), pipeline.StageRecords(out), progress=False)
    expected = fileio.file_sha256(out / "split" / "teacher.csv")
    assert run.digests([out / "split" / "teacher.csv"]) == {"split/teacher.csv": expected}
    with pytest.raises(FileNotFoundError, match="valid.csv: not found"):
        run.digests([out / "split" / "valid.csv"])         # never a null hash standing for a file


def test_file_digests_are_cached_by_size_and_times_and_see_an_edit_that_keeps_them(tmp_path, monkeypatch):
    from wbc_nnabla import digests
    image, cache = tmp_path / "cell.png", tmp_path / "cache.json"
    cv2.imwrite(str(image), np.full((16, 16, 3), 200, np.uint8))
    first = digests.FileDigests(cache)
    a = first.files([image])
    first.save()
    hashed = []
    monkeypatch.setattr(digests, "file_sha256", lambda p: hashed.append(p) or fileio.file_sha256(p))
    again = digests.FileDigests(cache)
    assert again.files([image]) == a and hashed == []     # read back from the cache file, not hashed again
    st = image.stat()
    cv2.imwrite(str(image), np.full((16, 16, 3), 201, np.uint8))    # same size, other pixels
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))            # and the old modification time
    assert image.stat().st_size == st.st_size
    assert digests.FileDigests(cache).files([image]) != a and len(hashed) == 1
    assert digests.FileDigests().files([tmp_path / "gone.png"]) != a


# ----------------------------------------------------------------------------- reproduce: sources edited in place

SMALL = ["--preset", "demo", "--train-size", "32", "--infer-size", "32", "--total-a", "48", "--total-b", "48",
         "--gradcam-examples", "0"]


@pytest.fixture
def fake_training(monkeypatch, tiny_model):
    """Training inside reproduce copies the session's tiny model; returns the model folders it was asked for."""
    calls = []

    def train(dataset, out, config=None, resume=False):
        calls.append(Path(out).name)
        shutil.copytree(tiny_model, out)
        return {}

    monkeypatch.setattr(training, "train", train)
    return calls


@pytest.fixture
def sources(tmp_path):
    """src/: 6 teacher and 2 inference demo cells per class (copies: they are edited in place), teacher.csv and
    inference.csv (smears S1, S2)."""
    src = tmp_path / "src"
    demo = fileio.read_cells(fileio.demo_data())
    rows = {"teacher": [], "inference": []}
    for c in classes.CLASSES6:
        for j, p in enumerate(demo.loc[demo["label"] == c, "path"].head(8)):
            dst = src / "images" / Path(p).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
            kind = "teacher" if j < 6 else "inference"
            rows[kind].append(dict(path=str(dst), label=c, **({"smear": f"S{j - 5}"} if kind == "inference" else {})))
    for kind, r in rows.items():
        pd.DataFrame(r).to_csv(src / f"{kind}.csv", index=False)
    return src


def _reproduce(capsys, src):
    """`wbc-nnabla reproduce src/teacher.csv rep --inference src/inference.csv` (rep relative to the working folder):
    the stages it ran (summary.json's timings), after the hostile module's checks of a handled run."""
    before = _hashes(src)
    rc, err = _run(["reproduce", src / "teacher.csv", "rep", "--inference", src / "inference.csv"] + SMALL, capsys)
    assert rc == 0 and "Traceback" not in err, err
    assert _hashes(src) == before and _no_temporaries(Path("rep")) == []
    return set(json.loads(Path("rep/summary.json").read_text())["timings"])


def _edit_label(csv: Path, row: int, label: str) -> str:
    df = pd.read_csv(csv, keep_default_na=False)
    df.loc[row, "label"] = label
    df.to_csv(csv, index=False)
    return df["path"][row]


def _brighten(image: Path) -> None:
    """The same photo with other pixels, written in place under its name."""
    rgb = cv2.imread(str(image))
    cv2.imwrite(str(image), np.clip(rgb.astype(int) + 12, 0, 255).astype(np.uint8))


BEFORE_TRAINING = {"split", "dataset_A", "dataset_B"}
INFERENCE = {"dataset_inference", "predict_A", "predict_B", "score_A", "score_B", "compare"}


def test_reproduce_sees_a_label_or_pixels_edited_in_place(tmp_path, monkeypatch, capsys, sources, fake_training):
    monkeypatch.chdir(tmp_path)
    assert _reproduce(capsys, sources) >= BEFORE_TRAINING | INFERENCE and fake_training == ["model_A", "model_B"]
    assert _reproduce(capsys, sources) == {"gradcam"}          # nothing changed: nothing runs again
    # a label of the inference set: its cells, predictions and scores follow; the models stay
    cell = _edit_label(sources / "inference.csv", 0, "Segment")
    assert _reproduce(capsys, sources) == {"split", "gradcam"} | INFERENCE and len(fake_training) == 2
    for table in ("rep/dataset_inference/cells.csv", "rep/predictions_A.csv", "rep/predictions_B.csv"):
        df = pd.read_csv(table, keep_default_na=False)       # the report scores the label as it is now
        assert df.loc[df["path"].str.contains(Path(cell).stem), "label"].tolist() == ["Segment"], table
    # a label of a teacher cell: both datasets and both models again
    _edit_label(sources / "teacher.csv", 0, "Segment")
    assert _reproduce(capsys, sources) >= BEFORE_TRAINING | {"train_A", "train_B"}
    assert fake_training[2:] == ["model_A", "model_B"]
    # pixels of a teacher and of an inference image, in place: every stage that reads them
    _brighten(Path(pd.read_csv(sources / "teacher.csv")["path"][3]))
    _brighten(Path(pd.read_csv(sources / "inference.csv")["path"][3]))
    assert _reproduce(capsys, sources) >= BEFORE_TRAINING | INFERENCE | {"train_A", "train_B"}
    # pixels of an image of dataset ① (inside OUT): Model A is trained again, nothing before it runs
    _brighten(sorted(Path("rep/dataset_A/images").rglob("*.png"))[0])
    assert _reproduce(capsys, sources) == {"train_A", "gradcam"} and fake_training[-1] == "model_A"
    assert Path("rep", stages.DIGESTS_FILE).is_file()


# ----------------------------------------------------------------------------- train --resume


def _train(ds: Path, run: Path, epochs: int, capsys, resume: bool = False):
    return _run(["train", ds, run, "--size", "32", "--batch-size", "4", "--epochs", str(epochs), "--pretrained",
                 "none", "--no-progress", "--bn-recalibration", "8", "--set", "max_iterations=2",
                 "--set", "train_eval_limit=4"] + (["--resume"] if resume else []), capsys)


def _build(cells: Path, ds: Path, seed: int, capsys):
    rc, err = _run(["build-dataset", cells, ds, "--size", "32", "--total", "48", "--background", "keep", "--seed",
                    str(seed), "--no-progress", "--overwrite"], capsys)
    assert rc == 0, err


def test_train_resume_refuses_a_dataset_whose_files_changed(tmp_path, capsys, sources):
    """The issue's case: a dataset rebuilt in place with another seed (training cells became validation cells)
    resumed silently. The dataset rebuilt as it was resumes; an older run without the digest resumes as before."""
    from wbc_nnabla import digests
    ds, run = tmp_path / "ds", tmp_path / "run"
    _build(sources / "teacher.csv", ds, 0, capsys)
    assert _train(ds, run, 1, capsys)[0] == 0
    saved = json.loads((run / "config.json").read_text())["config"]["dataset_sha256"]
    assert saved == digests.dataset_digest(ds)
    _build(sources / "teacher.csv", ds, 1, capsys)            # rebuilt in place, another seed
    before = _hashes(tmp_path)
    rc, err = _train(ds, run, 2, capsys, resume=True)
    _one_line_error(rc, err, f"{run}: cannot resume: the files of dataset {ds} (train.csv, valid.csv or an image")
    assert _hashes(tmp_path) == before
    _build(sources / "teacher.csv", ds, 0, capsys)            # rebuilt as it was: the same bytes
    image = next((ds / "images").rglob("*.png"))
    original = image.read_bytes()
    _brighten(image)                                           # one image changed in place
    rc, err = _train(ds, run, 2, capsys, resume=True)
    _one_line_error(rc, err, "cannot resume: the files of dataset")
    image.write_bytes(original)
    assert _train(ds, run, 2, capsys, resume=True)[0] == 0
    config = json.loads((run / "config.json").read_text())
    del config["config"]["dataset_sha256"]                     # a run written before the digest was recorded
    (run / "config.json").write_text(json.dumps(config))
    _brighten(image)
    assert _train(ds, run, 3, capsys, resume=True)[0] == 0     # resumes as before (nothing to compare with)
    assert len(json.loads((run / "config.json").read_text())["history"]) == 3
