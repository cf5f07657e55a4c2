"""Predictions and the fast CPU backends, on the demo cells at 32-64 px."""
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

nn = pytest.importorskip("nnabla")
import nnabla.functions as F  # noqa: E402
import nnabla.solvers as S  # noqa: E402

from helpers import demo_cells  # noqa: E402
from wbc_nnabla import CLASSES6, cli, classes, fileio, modelfile, models, predictions  # noqa: E402
from wbc_nnabla import predictor as inf  # noqa: E402
from wbc_nnabla.export import export_onnx  # noqa: E402
from wbc_nnabla.modelfile import ModelError  # noqa: E402

PROBS = [f"prob_{c}" for c in CLASSES6]


@pytest.fixture(autouse=True, scope="module")
def onnx_cache(tmp_path_factory):
    """Keep on-the-fly ONNX conversions out of the user's cache (shared by this module's tests)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WBC_NNABLA_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    yield
    mp.undo()


def train_tiny(path, class_names, size=32, steps=1, seed=0):
    """A ResNet-18 with other classes than the six (``training.train`` makes six-class models only):
    ``steps`` Adam steps on 12 demo cells, saved as a model .nnp.

    Training updates the BatchNorm running statistics (momentum 0.9), so the
    test-mode network differs from a freshly initialised one.
    """
    cells = demo_cells(2)
    x_np = np.stack([inf.load_input(p, size) for p in cells["path"]])
    y_np = np.array([classes.INDEX6[c] % len(class_names) for c in cells["label"]], np.int32)[:, None]
    np.random.seed(seed)
    scope: dict = {}
    with nn.parameter_scope("tiny", scope=scope):
        x, t = nn.Variable(x_np.shape), nn.Variable(y_np.shape)
        loss = F.mean(F.softmax_cross_entropy(models.resnet18(x, len(class_names), test=False), t))
        solver = S.Adam(1e-3)
        solver.set_parameters(nn.get_parameters(grad_only=True))
        x.d, t.d = x_np, y_np
        for _ in range(steps):
            loss.forward()
            solver.zero_grad()
            loss.backward()
            solver.update()
        params = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    assert np.abs(params["layer2/0/bn1/bn/mean"]).max() > 1e-3, "BN statistics were not updated"
    modelfile.save_nnp(path, params, modelfile.model_meta("resnet18", class_names, size))
    return path, params


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """The session's tiny trained model (conftest), 32 px; trained, so its BatchNorm statistics are not the
    fresh ones and the test-mode network differs from a freshly initialised one."""
    path = tiny_model / "model.nnp"
    assert np.abs(modelfile.load_parameters(path)["layer2/0/bn1/bn/mean"]).max() > 1e-3
    return path


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_shape_range_and_interpolation():
    rgb = np.random.RandomState(0).randint(0, 256, (90, 70, 3), dtype=np.uint8)
    x = inf.preprocess(rgb, 64)       # one side larger, one smaller: linear (training's rule)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    flat = np.full((100, 100, 3), (255, 0, 51), np.uint8)
    y = inf.preprocess(flat, 40)
    np.testing.assert_allclose(y[:, 0, 0], [1.0, 0.0, 0.2], atol=1e-6)   # RGB order kept, scaled by 1/255
    # shrinking uses area averaging: a 2x2 checkerboard becomes flat grey
    checker = np.kron((np.indices((32, 32)).sum(0) % 2) * 255, np.ones((1, 1))).astype(np.uint8)
    z = inf.preprocess(np.dstack([checker] * 3), 16)
    np.testing.assert_allclose(z, 127.5 / 255, atol=1 / 255)
    with pytest.raises(ValueError, match="RGB uint8"):
        inf.preprocess(rgb.astype(np.float32), 32)


# ----------------------------------------------------------------------------- predict


def test_predict_demo_columns_and_probabilities(tiny):
    cells = demo_cells(2)
    df = inf.predict(tiny, cells, batch_size=5, backend="opencv", progress=False)
    assert list(df.columns) == list(predictions.SIX_COLUMNS)
    assert len(df) == len(cells) and list(df["path"]) == list(cells["path"])
    np.testing.assert_allclose(df[PROBS].sum(axis=1), 1.0, atol=1e-5)
    assert (df["pred6"] == df[PROBS].idxmax(axis=1).str[len("prob_"):]).all()
    assert set(df.loc[df.pred6.isin(["Band", "Segment"]), "pred5"]) <= {"Neutrophil"}
    assert (df["label"] == cells["label"]).all()
    assert df.attrs["backend"] == "opencv" and df.attrs["size"] == 32 == df.attrs["train_size"]


def test_size_override_warns(tiny, caplog):
    cells = demo_cells(1)
    with caplog.at_level(logging.WARNING, logger="wbc_nnabla.predictor"):
        df = inf.predict(tiny, cells, size=48, backend="onnxruntime", progress=False)
    assert df.attrs["size"] == 48
    assert any("trained at 32 px" in r.getMessage() for r in caplog.records)


def test_inputs_csv_folder_and_inference_dataset(tiny, tmp_path):
    cells = demo_cells(1)
    engine = inf.load_backend(tiny, "onnxruntime")
    # path,label,smear CSV (relative paths, a Neutrophil-only and an unlabeled cell)
    flat = tmp_path / "flat"
    flat.mkdir()
    names = []
    for i, p in enumerate(cells["path"]):
        names.append(f"c{i}.jpg")
        shutil.copy(p, flat / names[-1])
    labels = ["Neutrophil", ""] + list(cells["label"][2:])
    pd.DataFrame({"path": [f"flat/{n}" for n in names], "label": labels, "smear": ["S1"] * 3 + ["S2"] * 3}).to_csv(
        tmp_path / "cells_list.csv", index=False)
    df = inf.predict(engine, tmp_path / "cells_list.csv", progress=False)
    assert list(df["smear"]) == ["S1"] * 3 + ["S2"] * 3
    assert list(df["label"]) == labels
    # a folder of images: unlabeled cells
    df2 = inf.predict(engine, flat, progress=False)
    assert len(df2) == 6 and (df2["label"] == "").all() and (df2["smear"] == "").all()
    np.testing.assert_allclose(df2.sort_values("path")[PROBS].values, df.sort_values("path")[PROBS].values,
                               atol=1e-6)
    # an inference dataset folder (build-dataset --inference writes cells.csv)
    ds = tmp_path / "inference_ds"
    shutil.copytree(flat, ds / "images")
    pd.DataFrame({"path": [f"images/{n}" for n in names], "label": labels, "smear": ["A"] * 6}).to_csv(
        ds / "cells.csv", index=False)
    df3 = inf.predict(engine, ds, progress=False)
    assert len(df3) == 6 and (df3["smear"] == "A").all()
    # smear sub-folders (names that are not classes): unlabeled cells with the smear from the folder
    for s in ("smear01", "smear02"):
        shutil.copytree(flat, tmp_path / "smears" / s)
    df4 = inf.predict(engine, tmp_path / "smears", progress=False)
    assert sorted(set(df4["smear"])) == ["smear01", "smear02"] and (df4["label"] == "").all()
    # a class-folder tree (the demo data)
    df5 = inf.predict(engine, fileio.demo_data(), batch_size=64, progress=False)
    assert len(df5) == 120 and set(df5["label"]) == set(CLASSES6)


def test_parity_backends_on_trained_model(tiny):
    """nnabla vs opencv vs onnxruntime: same class, probabilities within 1e-4, 8 cells at 64 px."""
    cells = demo_cells(2).head(8)
    out = {b: inf.predict(tiny, cells, size=64, batch_size=3, backend=b, progress=False)
           for b in ("nnabla", "opencv", "onnxruntime")}
    ref = out["nnabla"]
    assert ref[PROBS].values.std(axis=1).min() > 1e-3, "model output is uniform: parity would be vacuous"
    for b in ("opencv", "onnxruntime"):
        assert np.abs(out[b][PROBS].values - ref[PROBS].values).max() < 1e-4, b
        assert (out[b]["pred6"] == ref["pred6"]).all(), b


def test_parity_backends_on_trained_groupnorm_model(tiny_gn_model, tmp_path):
    """The tiny ``--norm group`` model: nnabla vs opencv vs onnxruntime within 1e-4, same class, 8 cells at
    64 px and at its 32 px; from the .nnp (ONNX converted on the fly), and from an exported .onnx."""
    gn = tiny_gn_model / "model.nnp"
    cells = demo_cells(2).head(8)
    onnx_file = export_onnx(gn, tmp_path / "gn.onnx")
    for size in (64, None):
        out = {b: inf.predict(gn, cells, size=size, batch_size=3, backend=b, progress=False)
               for b in ("nnabla", "opencv", "onnxruntime")}
        out.update({f"{b} .onnx": inf.predict(onnx_file, cells, size=size, batch_size=3, backend=b, progress=False)
                    for b in ("opencv", "onnxruntime")})
        ref = out.pop("nnabla")
        assert ref[PROBS].values.std(axis=1).min() > 1e-3, "model output is uniform: parity would be vacuous"
        for b, df in out.items():
            assert np.abs(df[PROBS].values - ref[PROBS].values).max() < 1e-4, (b, size)
            assert (df["pred6"] == ref["pred6"]).all(), (b, size)
    assert inf.load_backend(gn, "onnxruntime").meta["norm"] == "group"
    assert ref.attrs["norm"] == "group" and ref.attrs["arch"] == "resnet18"


def test_cli_predict_and_export_name_a_groupnorm_model(tiny_gn_model, tmp_path, capsys):
    gn = tiny_gn_model / "model.nnp"
    cells = demo_cells(1)
    cells.to_csv(tmp_path / "cells.csv", index=False)
    assert cli.main(["export", str(gn), "--onnx", str(tmp_path / "gn.onnx")]) == 0
    assert "resnet18 with GroupNorm" in capsys.readouterr().out
    assert cli.main(["predict", str(tmp_path / "gn.onnx"), str(tmp_path / "cells.csv"), str(tmp_path / "p.csv"),
                     "--backend", "opencv", "--no-progress"]) == 0
    assert "(resnet18 with GroupNorm, classes" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["norm"] == "group"


def test_h5_model_input(tiny, tmp_path):
    params = modelfile.load_parameters(tiny)
    h5 = tmp_path / "tiny.h5"
    nn.save_parameters(str(h5), {k: nn.Variable.from_numpy_array(v) for k, v in params.items()}, extension=".h5")
    cells = demo_cells(1)
    a = inf.predict(h5, cells, size=32, backend="nnabla", progress=False)
    b = inf.predict(tiny, cells, backend="nnabla", progress=False)
    assert a.attrs["train_size"] is None          # an .h5 stores no size: none is assumed
    np.testing.assert_allclose(a[PROBS].values, b[PROBS].values, atol=1e-6)


@pytest.mark.parametrize("backend", ["nnabla", "opencv"])
def test_bare_h5_without_size_is_refused_not_guessed(tiny, tmp_path, backend, capsys):
    """A bare model.h5 has no metadata: predict used to assume 480 px (all cells Mono for a 32-px model)."""
    params = modelfile.load_parameters(tiny)
    h5 = tmp_path / "model.h5"
    nn.save_parameters(str(h5), {k: nn.Variable.from_numpy_array(v) for k, v in params.items()}, extension=".h5")
    with pytest.raises(modelfile.ModelError, match=r"model\.h5: the model stores no training input size.*--size"):
        inf.predict(h5, demo_cells(1), backend=backend, progress=False)
    cells_csv = tmp_path / "cells.csv"
    demo_cells(1).to_csv(cells_csv, index=False)
    assert cli.main(["predict", str(h5), str(cells_csv), str(tmp_path / "p.csv"), "--backend", backend,
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "stores no training input size" in err and "Traceback" not in err and not (tmp_path / "p.csv").exists()
    assert cli.main(["predict", str(h5), str(cells_csv), str(tmp_path / "p.csv"), "--backend", backend,
                     "--size", "32", "--no-progress"]) == 0


def test_predict_refuses_tiny_and_corrupt_images_or_skips_them(tiny, tmp_path, capsys):
    """A 1x1 image got a confident prediction; a cut JPEG decoded two-thirds grey. Refused, or skipped and listed."""
    import cv2
    cells = demo_cells(1)
    bad = tmp_path / "bad"
    bad.mkdir()
    cv2.imwrite(str(bad / "one_pixel.png"), np.full((1, 1, 3), 128, np.uint8))
    data = Path(cells["path"].iloc[0]).read_bytes()
    (bad / "cut.jpg").write_bytes(data[: len(data) // 3] + b"\xff\xd9")
    rows = list(cells["path"]) + [str(bad / "one_pixel.png"), str(bad / "cut.jpg")]
    listing = tmp_path / "cells.csv"
    listing.write_text("path,label\n" + "".join(f"{p},\n" for p in rows))
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(tiny), str(listing), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert ("one_pixel.png: image too small" in err or "cut.jpg: corrupt JPEG" in err) and not out.exists()
    assert cli.main(["predict", str(tiny), str(listing), str(out), "--no-progress", "--skip-bad",
                     "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "one_pixel.png: image too small" in printed and "cut.jpg: corrupt JPEG data" in printed
    df = pd.read_csv(out)
    assert len(df) == len(cells) and not df["path"].str.contains("one_pixel|cut").any()
    run = json.loads(out.with_suffix(".json").read_text())
    assert len(run["skipped"]) == 2 and run["batch_size"] == 3


def test_other_class_set_and_expected_classes(tmp_path):
    path, _ = train_tiny(tmp_path / "three.nnp", ("Lymph", "Mono", "Other"))
    cells = demo_cells(1)
    df = inf.predict(path, cells, backend="onnxruntime", progress=False)
    assert list(df.columns) == ["path", "smear", "label", "pred", "prob_Lymph", "prob_Mono", "prob_Other"]
    with pytest.raises(ModelError, match="differ from the expected"):
        inf.predict(path, cells, backend="onnxruntime", expected_classes=CLASSES6, progress=False)
    # an exported ONNX carries its class names: the same refusal without the .nnp
    onnx_path = export_onnx(path, tmp_path / "three.onnx")
    with pytest.raises(ModelError, match="three.onnx"):
        inf.predict(onnx_path, cells, backend="opencv", expected_classes=CLASSES6, progress=False)
    with pytest.raises(ModelError, match="needs the .nnp"):
        inf.load_backend(onnx_path, "nnabla")


def test_bad_models_and_args(tiny, tmp_path):
    junk = tmp_path / "junk.nnp"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip")
    for backend in ("nnabla", "opencv"):
        with pytest.raises(ModelError, match="junk.nnp"):
            inf.load_backend(junk, backend)
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"0")
    with pytest.raises(ModelError, match="unsupported model file type"):
        inf.load_backend(pth, "auto")
    with pytest.raises(ValueError, match="unknown backend"):
        inf.load_backend(tiny, "tensorflow")
    with pytest.raises(ValueError, match="at least 32"):
        inf.predict(tiny, demo_cells(1), size=16, backend="onnxruntime", progress=False)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    pd.DataFrame({"path": [str(bad)], "label": [""]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(fileio.ImageReadError, match="bad.jpg"):
        inf.predict(tiny, tmp_path / "bad.csv", backend="onnxruntime", progress=False)


def test_write_and_read_predictions(tiny, tmp_path):
    df = inf.predict(tiny, demo_cells(1), backend="onnxruntime", progress=False)
    out = predictions.write_predictions(df, tmp_path / "sub" / "pred.csv")
    assert list(pd.read_csv(out, keep_default_na=False).columns) == list(df.columns)
    back = predictions.read_predictions(out)
    assert list(back["path"]) == list(df["path"]) and list(back["label"]) == list(df["label"])
    assert (back["smear"] == predictions.ALL_SMEARS).all() and (back["pred6"] == df["pred6"]).all()
    assert (back["pred5"] == df["pred5"]).all()
    np.testing.assert_allclose(back[PROBS].values, df[PROBS].values, rtol=1e-6, atol=1e-7)
    assert [p.name for p in out.parent.iterdir()] == ["pred.csv"]


# ----------------------------------------------------------------------------- CLI


def test_cli_predict_and_export(tiny, tmp_path, capsys):
    src = tmp_path / "cells.csv"
    cells = demo_cells(1)
    cells[["path", "label"]].to_csv(src, index=False)
    out = tmp_path / "out" / "pred.csv"
    rc = cli.main(["predict", str(tiny), str(src), str(out), "--batch-size", "4", "--no-progress",
                   "--classes", "six", "--precision", "fp32"])     # fp32: compared with the export's below
    text = capsys.readouterr().out
    assert rc == 0 and "backend: " in text and out.is_file()
    df = pd.read_csv(out, keep_default_na=False)
    assert list(df.columns) == list(predictions.SIX_COLUMNS) and len(df) == 6
    run = json.loads(out.with_suffix(".json").read_text())
    assert run["backend"] in ("opencv", "onnxruntime") and run["size"] == 32
    onnx_out = tmp_path / "m.onnx"
    assert cli.main(["export", str(tiny), "--onnx", str(onnx_out)]) == 0 and onnx_out.is_file()
    rc = cli.main(["predict", str(onnx_out), str(src), str(tmp_path / "p2.csv"), "--backend", "opencv",
                   "--no-progress"])
    assert rc == 0
    p2 = pd.read_csv(tmp_path / "p2.csv")
    np.testing.assert_allclose(p2[PROBS].values, df[PROBS].values, atol=1e-4)
    capsys.readouterr()


def test_cli_errors(tiny, tmp_path, capsys):
    junk = tmp_path / "junk.nnp"
    junk.write_bytes(b"random bytes")
    src = tmp_path / "cells.csv"
    demo_cells(1)[["path", "label"]].to_csv(src, index=False)
    assert cli.main(["predict", str(junk), str(src), str(tmp_path / "p.csv")]) == 2
    assert "junk.nnp" in capsys.readouterr().err
    assert cli.main(["predict", str(tiny), str(src), str(tmp_path / "p.csv"), "--classes", "Band,Segment"]) == 2
    assert "differ from the expected" in capsys.readouterr().err
    assert cli.main(["export", str(junk), "--onnx", str(tmp_path / "j.onnx")]) == 2
    assert "junk.nnp" in capsys.readouterr().err
    # outputs never go inside the cells' source folder
    assert cli.main(["predict", str(tiny), str(fileio.demo_data()), str(fileio.demo_data() / "p.csv")]) == 2
    assert "inside the source folder" in capsys.readouterr().err
    assert not (fileio.demo_data() / "p.csv").exists()
