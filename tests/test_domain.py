"""The domain-shift warning: training stores a reference, predict measures the cells, score/report warn.

A model trained on 60 demo cells (10 per class; 32 px, one short epoch) stores the reference of its
training cells; the held-out demo cells are inside its domain, a recoloured copy of them (optical
density scaled per channel: another stain) is outside. The session's tiny model (12 training
images, fewer than the reference needs) stands for a model without reference.
"""
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wbc_nnabla import classes, cli, fileio, predictions, report, scoring
from wbc_nnabla.sites import domain, framing
from wbc_nnabla.errors import WBCError

nn = pytest.importorskip("nnabla")

from wbc_nnabla import export, modelfile, predictor, training  # noqa: E402
from wbc_nnabla.sites import adaptation, reference as domain_model, finetune
from wbc_nnabla.recipe import TrainConfig  # noqa: E402
from wbc_nnabla.sites.settings import FinetuneConfig  # noqa: E402

pytestmark = pytest.mark.slow

N_TRAIN, N_VALID = 10, 2


def _recolour(rgb: np.ndarray, scale=(1.3, 0.8, 1.1)) -> np.ndarray:
    """Another stain: optical density ``-log((I + 1) / 256)`` scaled per RGB channel."""
    od = -np.log((rgb.astype(np.float64) + 1) / 256) * np.asarray(scale)
    return np.clip(256 * np.exp(-od) - 1, 0, 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(root, model.nnp, held-out cell table, recoloured copy of it)``."""
    root = tmp_path_factory.mktemp("domain")
    demo = fileio.read_cells(fileio.demo_data())
    tr, va, held = [], [], []
    for _, g in demo.groupby("label"):
        tr += list(g.index[:N_TRAIN])
        va += list(g.index[N_TRAIN:N_TRAIN + N_VALID])
        held += list(g.index[N_TRAIN + N_VALID:])
    ds = root / "dataset"
    for name, rows in (("train.csv", tr), ("valid.csv", va)):
        fileio.write_nnc_csv(ds / name, demo.path[rows], [classes.index6(v) for v in demo.label[rows]])
    training.train(ds, root / "train", TrainConfig(epochs=1, size=32, batch_size=4, pretrained="none",
                                                   progress=False, max_iterations=2, train_eval_limit=4,
                                                   site_record=True))
    cells = demo.loc[held, ["path", "label"]].reset_index(drop=True)
    (root / "recoloured").mkdir()
    paths = []
    for i, p in enumerate(cells["path"]):
        paths.append(root / "recoloured" / f"cell_{i:03d}.png")
        fileio.write_image(paths[-1], _recolour(fileio.read_rgb(p)))
    return root, root / "train" / "model.nnp", cells, cells.assign(path=[str(p) for p in paths])


def test_training_stores_a_reference_of_its_training_cells(trained):
    _, model, _, _ = trained
    _, meta = modelfile.read_model(model)
    ref = domain.check_reference(meta[domain.META_KEY])
    assert ref["n_cells"] == 6 * N_TRAIN and ref["descriptors"] == list(domain.DESCRIPTORS)
    assert ref["cell_quantile"] == domain.CELL_QUANTILE and ref["cell_threshold"] > 0


def test_a_paper_run_records_nothing_for_the_wing_unless_asked(trained, tmp_path, monkeypatch):
    """``TrainConfig()`` (the library's default) computes no domain reference nor WBC scale: the seam is not
    called; predict then says the check is unavailable."""
    root, _, cells, _ = trained
    from wbc_nnabla.sites import seams
    monkeypatch.setattr(seams, "training_record", lambda *a, **k: pytest.fail("the wing's seam was called"))
    training.train(root / "dataset", tmp_path / "paper", TrainConfig(epochs=1, size=32, batch_size=4, pretrained="none",
                                                                     progress=False, max_iterations=1,
                                                                     train_eval_limit=4, bn_recalibration=0))
    _, meta = modelfile.read_model(tmp_path / "paper" / "model.nnp")
    assert domain.META_KEY not in meta and "wbc_share" not in meta
    config = json.loads((tmp_path / "paper" / "config.json").read_text())["config"]
    assert config["site_record"] is False and config["wbc_share"] is None
    table, run = predictor.predict_run(tmp_path / "paper" / "model.nnp", cells.head(4), backend="nnabla",
                                       progress=False)
    assert run.domain["available"] is False and "domain_distance" not in table.columns


def test_demo_cells_inside_recoloured_copy_outside(trained, caplog):
    _, model, cells, recoloured = trained
    inside = predictor.predict(model, cells, backend="nnabla", progress=False)
    s = inside.attrs["domain"]
    assert s["available"] and not s["run"]["outside_domain"], s["run"]
    assert s["run"]["share_outside"] <= domain.SMEAR_SHARE
    with caplog.at_level(logging.WARNING, logger="wbc_nnabla.predictor"):
        outside = predictor.predict(model, recoloured, backend="nnabla", progress=False)
    r = outside.attrs["domain"]["run"]
    assert r["outside_domain"] and r["share_outside"] > domain.SMEAR_SHARE, (r, s["run"])
    assert r["median_distance"] > 3 * s["run"]["median_distance"], (r, s["run"])
    assert outside["outside_domain"].mean() == r["share_outside"]
    assert any(domain.WARNING in m for m in caplog.messages)
    assert outside.attrs["domain"]["scale"] is None              # another stain, the same WBC scale


def test_cells_seen_larger_are_outside_and_named_with_the_way_out(trained, tmp_path, capsys):
    """The held-out cells cropped to half their side (the WBC twice as large, a lab that crops
    tight): outside, and predict names the scale and `adapt`."""
    _, model, cells, _ = trained
    (tmp_path / "tight").mkdir()
    for i, p in enumerate(cells["path"]):
        fileio.write_image(tmp_path / "tight" / f"cell_{i:03d}.png", framing.reframe(fileio.read_rgb(p), 0.5))
    rc = cli.main(["predict", str(model), str(tmp_path / "tight"), str(tmp_path / "p.csv"), "--backend", "nnabla",
                   "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and domain.WARNING in out, out
    scale = [line for line in out.splitlines() if line.startswith("scale: the WBC fills a median")]
    assert len(scale) == 1 and "wbc-nnabla adapt" in scale[0], out
    hint = predictions.read_run_config(tmp_path / "p.csv")["domain"]["scale"]     # the run's JSON keeps it
    assert 1.7 < hint["zoom"] < 2.3, hint


def test_onnx_backends_measure_the_same_distances(trained, tmp_path):
    _, model, cells, _ = trained
    onnx = export.export_onnx(model, tmp_path / "m.onnx")
    assert export.read_onnx_meta(onnx)[domain.META_KEY] == modelfile.read_meta(model)[domain.META_KEY]
    ref = predictor.predict(model, cells, backend="nnabla", progress=False)
    for backend in predictor.available_backends():
        if backend == "nnabla":
            continue
        got = predictor.predict(onnx, cells, backend=backend, progress=False)
        np.testing.assert_allclose(got["domain_distance"], ref["domain_distance"], rtol=1e-6)
        assert (got["outside_domain"] == ref["outside_domain"]).all()


def test_model_without_reference_check_unavailable_no_crash(tiny_model, demo_dir, tmp_path, capsys):
    model = tiny_model / "model.nnp"
    assert domain.META_KEY not in modelfile.read_meta(model)      # 12 training images: fewer than MIN_CELLS
    df = predictor.predict(model, demo_dir, backend="nnabla", progress=False)
    assert df.attrs["domain"]["available"] is False and "no domain reference" in df.attrs["domain"]["reason"]
    assert not set(predictions.DOMAIN_COLUMNS) & set(df.columns)
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(model), str(demo_dir), str(out), "--backend", "nnabla", "--no-progress"]) == 0
    assert "domain-shift check unavailable" in capsys.readouterr().out
    assert predictions.read_run_config(out)["domain"]["available"] is False
    result = scoring.score(out)
    assert result.summary["domain_check"] == "unavailable"
    report.write_score(result, tmp_path / "score", gallery=False)
    assert "Domain-shift check" in (tmp_path / "score" / "report.md").read_text() and \
        domain.WARNING not in (tmp_path / "score" / "report.md").read_text()


def test_adapt_keeps_the_reference(trained, tmp_path):
    _, model, _, recoloured = trained
    site = tmp_path / "site"
    site.mkdir()
    for i, p in enumerate(recoloured["path"]):
        (site / f"c{i:03d}.png").write_bytes(Path(p).read_bytes())
    out = tmp_path / "adapted.nnp"
    adaptation.adapt_batchnorm(model, site, out, max_images=32, batch_size=16, min_images=32)
    assert modelfile.read_meta(out)[domain.META_KEY] == modelfile.read_meta(model)[domain.META_KEY]


def test_run_config_records_the_batch_size_predict_used(trained):
    _, model, cells, _ = trained
    df = predictor.predict(model, cells, backend="nnabla", batch_size=8, progress=False)
    assert df.attrs["batch_size"] == 8 and predictor.run_config(df, model, cells)["batch_size"] == 8
    assert predictor.run_config(df, model, cells, 4)["batch_size"] == 4       # an explicit size wins


def test_predictions_csv_round_trip_and_bad_values(trained, tmp_path):
    _, model, cells, _ = trained
    df = predictor.predict(model, cells, backend="nnabla", progress=False)
    path = predictions.write_predictions(df, tmp_path / "p.csv", config=predictor.run_config(df, model, "x", 16))
    back = predictions.read_predictions(path)
    np.testing.assert_allclose(back["domain_distance"], df["domain_distance"], rtol=1e-6)
    assert (back["outside_domain"] == df["outside_domain"].astype(bool)).all()
    assert predictions.read_run_config(path)["domain"]["run"]["n_cells"] == len(df)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    old = predictions.read_predictions(raw.drop(columns=list(predictions.DOMAIN_COLUMNS)))
    assert "domain_distance" not in old.columns                     # an older file still reads
    for col, value, words in (("domain_distance", "-1", "not a distance"), ("domain_distance", "nan", "not a"),
                              ("outside_domain", "maybe", "expected 0 or 1")):
        bad = raw.copy()
        bad.loc[3, col] = value
        with pytest.raises(predictions.PredictionsError, match=rf"line 5, column '{col}'.*{words}"):
            predictions.read_predictions(bad, name="bad.csv")
    with pytest.raises(predictions.PredictionsError, match="come together"):
        predictions.read_predictions(raw.drop(columns=["outside_domain"]), name="half.csv")


def test_score_and_report_warn_per_smear(trained, tmp_path, capsys):
    _, model, cells, recoloured = trained
    table = pd.concat([cells.assign(smear="lab_own"), recoloured.assign(smear="lab_other")], ignore_index=True)
    df = predictor.predict(model, table, backend="nnabla", progress=False)
    path = predictions.write_predictions(df, tmp_path / "p.csv")
    assert domain.outside_smears(df.attrs["domain"]) == ["lab_other"]
    result = scoring.score(path)
    assert result.summary["smears_outside_domain"] == ["lab_other"]
    per = result.per_smear.set_index("smear")
    assert per.at["lab_other", "outside_domain"] and not per.at["lab_own", "outside_domain"]
    assert per.at["lab_other", "domain_share_outside"] > domain.SMEAR_SHARE >= per.at["lab_own", "domain_share_outside"]
    assert cli.main(["score", str(path), str(tmp_path / "score"), "--no-gallery"]) == 0
    assert "WARNING 1 smear(s) outside: lab_other" in capsys.readouterr().out
    md = (tmp_path / "score" / "report.md").read_text()
    assert domain.WARNING in md and "lab_other" in md.split(domain.WARNING)[1].splitlines()[0]
    assert "outside_domain" in pd.read_csv(tmp_path / "score" / "per_smear.csv").columns
    inside = scoring.score(predictions.write_predictions(df[df["smear"] == "lab_own"], tmp_path / "own.csv"))
    assert inside.summary["domain_check"] == "inside" and report.domain_warnings(inside.summary) == []


def test_domain_reference_for_an_older_model(trained, tiny_model, tmp_path):
    root, _, _, _ = trained
    old = tiny_model / "model.nnp"
    out = tmp_path / "with_ref.nnp"
    ref = domain_model.add_domain_reference(old, root / "dataset", out)
    assert modelfile.read_meta(out)[domain.META_KEY] == ref and ref["n_cells"] == 6 * N_TRAIN
    a, b = modelfile.load_parameters(old), modelfile.load_parameters(out)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(WBCError, match="is the input model"):
        domain_model.add_domain_reference(old, root / "dataset", old, overwrite=True)
    by_cli = tmp_path / "by_cli.nnp"
    assert cli.main(["domain-reference", str(old), str(root / "dataset"), str(by_cli)]) == 0
    assert modelfile.read_meta(by_cli)[domain.META_KEY] == ref                 # same sample, same numbers
    before = by_cli.read_bytes()
    assert cli.main(["domain-reference", str(old), str(root / "dataset"), str(by_cli)]) == 2   # exists
    assert by_cli.read_bytes() == before
    small = tmp_path / "small"
    fileio.write_nnc_csv(small / "train.csv", [fileio.read_cells(fileio.demo_data())["path"][0]], [0])
    with pytest.raises(WBCError, match="at least"):
        domain_model.add_domain_reference(old, small, tmp_path / "x.nnp")
    assert not (tmp_path / "x.nnp").exists()


def test_predict_line_names_only_named_smears(trained, tmp_path, capsys):
    """predict's console line: the run's warning, and smear names only when the cells have some."""
    _, model, _, recoloured = trained

    def line(table: pd.DataFrame, name: str) -> str:
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        assert cli.main(["predict", str(model), str(tmp_path / f"{name}.csv"), str(tmp_path / f"p_{name}.csv"),
                         "--backend", "nnabla", "--no-progress"]) == 0
        return next(t for t in capsys.readouterr().out.splitlines() if t.startswith("domain-shift check"))

    unnamed = line(recoloured[["path", "label"]], "unnamed")
    assert domain.WARNING in unnamed and "smears:" not in unnamed, unnamed
    smears = ["S1"] * 10 + ["S2"] * (len(recoloured) - 10)
    assert line(recoloured.assign(smear=smears), "named").endswith("(smears: S1, S2)")


def test_reference_and_distance_units():
    rng = np.random.default_rng(0)
    desc = rng.normal(size=(400, len(domain.DESCRIPTORS)))
    ref = domain.reference(desc)
    inside = domain.outside(ref, domain.distance(ref, rng.normal(size=(2000, len(domain.DESCRIPTORS)))))
    assert 0.0 < inside.mean() < 0.03                                 # about 1 - CELL_QUANTILE
    shifted = domain.distance(ref, rng.normal(size=(100, len(domain.DESCRIPTORS))) + 3)
    assert domain.outside(ref, shifted).all()
    white = desc.copy()
    white[:, domain.DESCRIPTORS.index("bright_p90")] = 1.0               # background removed: constant
    ref_white = domain.reference(white)
    probe = white[:3].copy()
    probe[:, domain.DESCRIPTORS.index("bright_p90")] = [1.0, 1.0 - domain.FLOOR, 0.9]
    dist = domain.distance(ref_white, probe)
    assert np.isfinite(dist).all() and dist[0] < dist[1] < dist[2] and dist[2] > ref_white["cell_threshold"]
    with pytest.raises(domain.DomainError, match="at least"):
        domain.reference(desc[:5])
    with pytest.raises(domain.DomainError, match="not a domain reference"):
        domain.distance({"format": "x"}, desc)
    x = [fileio.read_rgb(p) for p in fileio.read_cells(fileio.demo_data())["path"][:4]]
    small = [predictor.preprocess(im, 64) for im in x]
    large = [predictor.preprocess(im, 128) for im in x]
    np.testing.assert_allclose(domain.descriptors(np.stack(small)), domain.descriptors(np.stack(large)), atol=0.02)


def test_finetune_on_a_sites_labelled_cells_makes_cells_like_them_inside(trained, tmp_path, capsys):
    """``finetune`` stores the reference of the site's labelled cells (docs/inference.md, "Domain-shift
    warning"): the site's other cells are then inside, the training lab's still are, a third stain is not."""
    root, model, cells, recoloured = trained
    train = fileio.read_nnc_csv(root / "dataset" / "train.csv")
    site = tmp_path / "site"
    site.mkdir()
    rows = []
    for i, (p, label) in enumerate(zip(train["path"], train["label"])):
        rows.append((site / f"c{i:03d}.png", label))
        fileio.write_image(rows[-1][0], _recolour(fileio.read_rgb(p)))
    labelled = tmp_path / "labelled.csv"
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(labelled, index=False)
    assert len(rows) >= finetune.MIN_SITE_REFERENCE_CELLS
    tuned = tmp_path / "tuned.nnp"
    assert cli.main(["finetune", str(model), str(labelled), str(tuned), "--iterations", "2", "--batch-size", "4",
                     "--no-progress"]) == 0
    assert "now count as inside" in capsys.readouterr().out
    meta = modelfile.read_meta(tuned)
    assert meta[domain.META_KEY] == modelfile.read_meta(model)[domain.META_KEY]     # the training cells' stays
    (ref,) = domain.site_references(meta)
    assert ref["n_cells"] == len(rows) and str(labelled) in ref["source"] and meta["finetune"]["site_domain_reference"]

    before = predictor.predict(model, recoloured, backend="nnabla", progress=False).attrs["domain"]
    after = predictor.predict(tuned, recoloured, backend="nnabla", progress=False)
    assert before["run"]["outside_domain"] and not after.attrs["domain"]["run"]["outside_domain"], after.attrs
    assert after.attrs["domain"]["site_references"] == [ref["source"]]
    assert after.attrs["domain"]["run"]["median_distance"] == before["run"]["median_distance"]  # to the training cells
    assert not predictor.predict(tuned, cells, backend="nnabla", progress=False).attrs["domain"]["run"]["outside_domain"]
    third = tmp_path / "third"
    third.mkdir()
    for i, p in enumerate(cells["path"]):
        fileio.write_image(third / f"c{i:03d}.png", _recolour(fileio.read_rgb(p), scale=(0.6, 1.3, 0.8)))
    assert predictor.predict(tuned, third, backend="nnabla", progress=False).attrs["domain"]["run"]["outside_domain"]

    onnx = export.export_onnx(tuned, tmp_path / "tuned.onnx")
    assert export.read_onnx_meta(onnx)[domain.SITE_KEY] == meta[domain.SITE_KEY]
    again = tmp_path / "again.nnp"
    finetune.finetune(tuned, labelled, again, FinetuneConfig(iterations=1, batch_size=4), progress=False)
    assert len(domain.site_references(modelfile.read_meta(again))) == 2        # one per fine-tuning


def test_too_few_labelled_cells_store_no_site_reference(trained):
    _, model, cells, _ = trained
    meta = modelfile.read_meta(model)
    paths = list(cells["path"])
    labels = np.zeros(len(paths), np.int32)
    n = finetune.MIN_SITE_REFERENCE_CELLS
    assert len(paths) < n and finetune.site_reference(meta, paths, labels, 32, Path("few.csv")) is None
    many = (paths * 2)[:n]
    ref = finetune.site_reference(meta, many, np.zeros(n, np.int32), 32, Path("many.csv"))
    assert ref["n_cells"] == n and "many.csv" in ref["source"]
    with pytest.raises(domain.DomainError, match=r"bad.nnp: domain_site_references\[0\]"):
        domain.site_references({domain.SITE_KEY: [{"format": "other"}]}, "bad.nnp")
