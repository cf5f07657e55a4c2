"""Few-shot fine-tuning (`wbc-nnabla finetune`) on the embedded demo cells, and its refusals.

The session's tiny model (32 px) is fine-tuned for a few iterations on labelled demo cells
(five-class labels: Band/Segment given as Neutrophil). What must hold: BatchNorm statistics
and ``preprocess`` are copied byte for byte, the weights move, the record says what was used,
``predict`` reads the result, and bad input is refused naming the file with nothing written.
"""

import numpy as np
import pandas as pd
import pytest

nn = pytest.importorskip("nnabla")

from helpers import file_hashes  # noqa: E402

from wbc_nnabla import cli, classes, fileio, modelfile, predictor  # noqa: E402
from wbc_nnabla.sites import finetune
from wbc_nnabla.sites.settings import FinetuneConfig  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A ``path,label`` CSV of 24 demo cells, 4 per class, Band and Segment written as Neutrophil."""
    root = tmp_path_factory.mktemp("ft")
    demo = fileio.read_cells(fileio.demo_data())
    rows = demo.groupby("label").head(4).reset_index(drop=True)
    rows["label"] = rows["label"].map(classes.to_class5)
    rows[["path", "label"]].to_csv(root / "labelled.csv", index=False)
    return root, root / "labelled.csv"


@pytest.fixture(scope="module")
def tuned(labelled, tiny_model):
    root, csv = labelled
    model = root / "model.nnp"
    model.write_bytes((tiny_model / "model.nnp").read_bytes())
    before = file_hashes(model, csv)
    r = finetune.finetune(model, csv, root / "out" / "tuned.nnp", FinetuneConfig(iterations=6, batch_size=8),
                          progress=False)
    assert file_hashes(model, csv) == before          # sources only read
    return model, root / "out" / "tuned.nnp", r


def test_target_groups_merge_band_and_segment():
    names, member = finetune.target_groups(classes.CLASSES6)
    assert names == list(classes.CLASSES6) + ["Neutrophil"]
    assert member.shape == (6, 7)
    np.testing.assert_array_equal(member[:, :6], np.eye(6))
    assert [classes.CLASSES6[i] for i in np.flatnonzero(member[:, 6])] == ["Band", "Segment"]
    names, member = finetune.target_groups(["Lymph", "Mono"])
    assert names == ["Lymph", "Mono"] and member.shape == (2, 2)


def test_only_weights_change_and_statistics_are_kept(tuned):
    model, out, r = tuned
    a, b = modelfile.load_parameters(model), modelfile.load_parameters(out)
    assert set(a) == set(b)
    frozen = [k for k in a if k.endswith("/mean") or k.endswith("/var") or k.startswith("preprocess/")]
    assert frozen
    for k in frozen:
        assert a[k].tobytes() == b[k].tobytes(), f"{k} changed"
    moved = [k for k in a if k not in frozen and not np.array_equal(a[k], b[k])]
    assert "fc/affine/W" in moved and any(k.startswith("conv1/") for k in moved)
    assert len(r["costs"]) == 6 and all(np.isfinite(r["costs"]))


def test_record_says_what_was_used(tuned, labelled):
    _, out, r = tuned
    meta = modelfile.read_meta(out)
    rec = meta["finetune"]
    assert rec["n_cells"] == 24
    assert rec["per_class"] == {"Basophil": 4, "Eosinophil": 4, "Lymph": 4, "Mono": 4, "Neutrophil": 8}
    assert rec["settings"]["iterations"] == 6 and rec["source"] == str(labelled[1].resolve())
    assert meta["class_names"] == list(classes.CLASSES6)
    # new weights: the calibration cells of the model it started from no longer describe it
    assert "calibration" in modelfile.read_meta(tuned[0]) and "calibration" not in meta


def test_predict_reads_the_finetuned_model(tuned, labelled):
    df = predictor.predict(tuned[1], labelled[1], backend="nnabla", progress=False)
    assert len(df) == 24 and set(df["pred6"]) <= set(classes.CLASSES6)


def _refused(capsys, *argv) -> str:
    assert cli.main(list(map(str, argv))) != 0
    return capsys.readouterr().err


def test_cli_refuses_bad_labels_and_writes_nothing(tmp_path, tiny_model, capsys):
    model = tiny_model / "model.nnp"
    demo = fileio.read_cells(fileio.demo_data()).groupby("label").head(2)
    cases = {
        "unlabelled.csv": demo.assign(label="")[["path"]],
        "one_class.csv": demo.assign(label="Lymph")[["path", "label"]],
        "few.csv": demo.head(3)[["path", "label"]],
    }
    for name, df in cases.items():
        df.to_csv(tmp_path / name, index=False)
        err = _refused(capsys, "finetune", model, tmp_path / name, tmp_path / f"{name}.nnp", "--iterations", 1)
        assert name in err, err
        assert not (tmp_path / f"{name}.nnp").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "empty" in _refused(capsys, "finetune", model, empty, tmp_path / "e.nnp")
    assert not (tmp_path / "e.nnp").exists()


def test_cli_refuses_labels_outside_the_models_classes(tmp_path, tiny_model, capsys):
    """A two-class model cannot learn Eosinophil: the error names the file, the cell and the classes."""
    params, meta = modelfile.read_model(tiny_model / "model.nnp")
    params = {k: (v[:, :2] if k == "fc/affine/W" else v[:2] if k == "fc/affine/b" else v) for k, v in params.items()}
    two = tmp_path / "two.nnp"
    modelfile.save_nnp(two, params, modelfile.model_meta(meta["arch"], ["Lymph", "Mono"], 32))
    demo = fileio.read_cells(fileio.demo_data())
    pd.concat([demo[demo.label == c].head(3) for c in ("Lymph", "Mono", "Eosinophil")])[["path", "label"]] \
        .to_csv(tmp_path / "cells.csv", index=False)
    err = _refused(capsys, "finetune", two, tmp_path / "cells.csv", tmp_path / "out.nnp", "--iterations", 1)
    assert "cells.csv" in err and "'Eosinophil'" in err and "Lymph, Mono" in err
    assert not (tmp_path / "out.nnp").exists()


def test_cli_never_replaces_the_model_or_an_existing_file(tmp_path, tiny_model, labelled, capsys):
    model = tmp_path / "model.nnp"
    model.write_bytes((tiny_model / "model.nnp").read_bytes())
    before = file_hashes(model)
    assert "never replaced" in _refused(capsys, "finetune", model, labelled[1], model, "--iterations", 1)
    other = tmp_path / "other.nnp"
    other.write_bytes(b"a user's file")
    _refused(capsys, "finetune", model, labelled[1], other, "--iterations", 1)
    assert other.read_bytes() == b"a user's file" and file_hashes(model) == before


# ----------------------------------------------------------------------------- --select: cross-validation inside the labelled cells


@pytest.fixture()
def short_grid(monkeypatch):
    """The --select grid at 1 and 2 updates (the shipped 100 and 200 are for real fine-tuning)."""
    from wbc_nnabla.sites import settings
    monkeypatch.setattr(settings, "SELECT_ITERATIONS", (1, 2))


@pytest.fixture(scope="module")
def labelled36(tmp_path_factory):
    """A ``path,label`` CSV of 36 demo cells, 6 per class, Band and Segment written as Neutrophil."""
    root = tmp_path_factory.mktemp("ft36")
    rows = fileio.read_cells(fileio.demo_data()).groupby("label").head(6).reset_index(drop=True)
    rows["label"] = rows["label"].map(classes.to_class5)
    rows[["path", "label"]].to_csv(root / "labelled.csv", index=False)
    return root / "labelled.csv"


def test_assign_folds_is_stratified_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [17, 5, 9, 1])
    fold = finetune.assign_folds(labels, 3, seed=2)
    sizes = np.bincount(fold, minlength=3)
    assert sizes.sum() == 32 and sizes.max() - sizes.min() <= 1
    for c in range(4):
        per = np.bincount(fold[labels == c], minlength=3)
        assert per.max() - per.min() <= 1, (c, per)
    np.testing.assert_array_equal(fold, finetune.assign_folds(labels, 3, seed=2))
    assert not np.array_equal(fold, finetune.assign_folds(labels, 3, seed=3))


def test_best_setting_takes_the_best_mean_and_breaks_ties_gently():
    rows = [dict(alpha=a, final_lr=a * 100, iterations=i, fold=f, accuracy=acc)
            for (a, i, accs) in [(1e-4, 100, (0.5, 0.7)), (1e-4, 200, (0.6, 0.6)),
                                 (1e-3, 100, (0.6, 0.6)), (1e-3, 200, (0.4, 0.5))]
            for f, acc in enumerate(accs)]
    cfg = finetune.best_setting(pd.DataFrame(rows), FinetuneConfig(batch_size=4, seed=7))
    # three settings tie at 0.6: fewer updates first, then the smaller step
    assert (cfg.alpha, cfg.final_lr, cfg.iterations) == (1e-4, 1e-2, 100)
    assert (cfg.batch_size, cfg.seed) == (4, 7)
    rows[-1]["accuracy"] = rows[-2]["accuracy"] = 0.9
    cfg = finetune.best_setting(pd.DataFrame(rows), FinetuneConfig())
    assert (cfg.alpha, cfg.iterations) == (1e-3, 200)


def test_cross_validation_scores_a_checkpoint_as_the_shorter_run(tiny_model, labelled36):
    """The first update of a 2-update run is the 1-update run: one run per fold serves both."""
    params, meta = modelfile.read_model(tiny_model / "model.nnp")
    paths, labels, _ = finetune.read_labelled(labelled36, meta["class_names"])
    both = [FinetuneConfig(iterations=i, batch_size=8, alpha=1e-3, final_lr=0.1) for i in (1, 2)]
    table = finetune.cross_validate(params, meta, paths, labels, both, folds=2, size=32)
    assert list(table.columns) == ["alpha", "final_lr", "iterations", "fold", "n_held_out", "accuracy"]
    assert len(table) == 4 and table["n_held_out"].groupby(table["iterations"]).sum().tolist() == [36, 36]
    assert table["accuracy"].between(0, 1).all()
    alone = finetune.cross_validate(params, meta, paths, labels, both[:1], folds=2, size=32)
    np.testing.assert_allclose(alone["accuracy"].to_numpy(),
                               table[table.iterations == 1]["accuracy"].to_numpy(), atol=1e-12)


def test_select_chooses_by_cross_validation_and_records_it(tmp_path, tiny_model, labelled36, short_grid, tuned,
                                                            capsys):
    model = tiny_model / "model.nnp"
    out = tmp_path / "selected.nnp"
    assert cli.main(["finetune", str(model), str(labelled36), str(out), "--select", "--folds", "2",
                     "--batch-size", "8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    rec = modelfile.read_meta(out)["finetune"]
    sel = rec["selection"]
    table = pd.DataFrame(sel["table"])
    assert sel["folds"] == 2 and len(table) == 2 * 2 * 2          # steps x update counts x folds
    assert sorted(set(table["alpha"])) == [1e-4, 1e-3] and sorted(set(table["iterations"])) == [1, 2]
    best = finetune.best_setting(table, FinetuneConfig())
    assert sel["chosen"] == dict(alpha=best.alpha, final_lr=best.final_lr, iterations=best.iterations)
    # the model itself was fine-tuned on all 36 cells with the chosen setting
    assert rec["n_cells"] == 36 and rec["settings"]["iterations"] == best.iterations
    assert rec["settings"]["alpha"] == best.alpha
    assert printed.count("cross-validation (2 folds)") == 4 and "chosen: step" in printed
    assert tuned[2]["selection"] is None                           # a run without --select records none


def test_select_refuses_too_few_cells_and_writes_nothing(tmp_path, tiny_model, labelled, capsys):
    """24 labelled cells are fewer than --select's minimum: the file is named, nothing is written."""
    err = _refused(capsys, "finetune", tiny_model / "model.nnp", labelled[1], tmp_path / "out.nnp", "--select")
    assert "labelled.csv" in err and str(finetune.MIN_SELECT_CELLS) in err and "--select" in err
    err = _refused(capsys, "finetune", tiny_model / "model.nnp", labelled[1], tmp_path / "out.nnp", "--select",
                   "--folds", "1")
    assert "--folds" in err
    err = _refused(capsys, "finetune", tiny_model / "model.nnp", labelled[1], tmp_path / "out.nnp", "--select",
                   "--iterations", "300")
    assert "--select chooses --iterations" in err
    assert not any(tmp_path.iterdir())
