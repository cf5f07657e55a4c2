"""int8 scoring (wbc_nnabla.quantize): made from the ONNX export on calibration cells, checked, cached,
never calibrated on the cells it scores; on a tiny model trained here on the demo cells (32 px)."""
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("nnabla")
pytest.importorskip("onnxruntime")

from helpers import demo_nnc_dataset  # noqa: E402
from wbc_nnabla import cli, fileio, modelfile, predictor, quantize, training  # noqa: E402
from wbc_nnabla.export import cache_dir  # noqa: E402
from wbc_nnabla.predictions import PROB_COLUMNS  # noqa: E402
from wbc_nnabla.recipe import TrainConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("onnx_cache")]     # fp32 and int8 files in a temp cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model that has learned a little: 3 epochs at 32 px on 84 demo cells (14 a class), validated
    on the other 36, which are its own calibration cells. (The session's ``tiny_model``, 2 updates of
    4 images, is near its random start: its int8 and fp32 agree on ~90% of the demo cells, a
    property of an untrained network's activations, not of the quantiser.) ~35 CPU-seconds."""
    root = tmp_path_factory.mktemp("int8")
    ds = demo_nnc_dataset(root / "ds", 14, 6)
    training.train(ds, root / "A", TrainConfig(epochs=3, size=32, batch_size=16, seed=0, pretrained="none",
                                               progress=False, train_eval_limit=12, bn_recalibration=84,
                                               tile_every=0))
    return root / "A" / "model.nnp", ds


def test_int8_agrees_with_fp32_on_the_demo_cells(trained):
    model, ds = trained
    fp32 = predictor.predict(model, ds / "train.csv", backend="onnxruntime", precision="fp32", progress=False)
    int8 = predictor.predict(model, ds / "train.csv", precision="int8", progress=False)
    same = (fp32["pred6"] == int8["pred6"]).to_numpy()
    print(f"int8 vs fp32 on the {len(same)} demo cells not calibrated on: {len(same) - same.sum()} disagree")
    assert same.mean() >= 0.95, f"{len(same) - same.sum()} of {len(same)} cells change class"
    assert int8.attrs["backend"] == "onnxruntime" and int8.attrs["precision"] == "int8"
    check = int8.attrs["int8"]
    assert "valid.csv" in check["calibration"] and check["n"] == 36 and check["chosen"] in ("per_tensor", "per_channel")
    assert quantize.accuracy_rule(check["fp32_accuracy"], check["int8_accuracy"])
    diff = np.abs(fp32[list(PROB_COLUMNS)].to_numpy() - int8[list(PROB_COLUMNS)].to_numpy()).max()
    assert 0 < diff < 0.5                     # other arithmetic, the same network
    engine = predictor.load_backend(model, precision="int8")
    fp32_file = predictor.load_backend(model, "onnxruntime", precision="fp32").onnx_path
    assert engine.onnx_path.stat().st_size < 0.4 * fp32_file.stat().st_size      # int8 weights: ~1/4
    assert b"QuantizeLinear" in engine.onnx_path.read_bytes()


def test_calibration_cells_are_never_scored(trained, tmp_path):
    model, ds = trained
    with pytest.raises(quantize.CalibrationOverlap, match="36 of the 36 cells to score are calibration cells"):
        predictor.predict(model, ds / "valid.csv", precision="int8", progress=False)
    copy = tmp_path / "renamed.jpg"                 # the same bytes under another name
    shutil.copy(fileio.read_nnc_csv(ds / "valid.csv")["path"][0], copy)
    with pytest.raises(quantize.CalibrationOverlap, match="renamed.jpg"):
        predictor.predict(model, pd.DataFrame({"path": [str(copy)]}), precision="int8", progress=False)
    with pytest.raises(quantize.CalibrationOverlap):             # cells given to calibrate on, then scored
        predictor.predict(model, ds / "train.csv", precision="int8", calibration=ds / "train.csv", progress=False)
    engine = predictor.load_backend(model, precision="int8")     # loaded first: predict checks it too
    with pytest.raises(quantize.CalibrationOverlap):
        predictor.predict(engine, ds / "valid.csv", progress=False)


def test_the_sources_a_dataset_was_cut_from_count_as_calibration_cells(tmp_path):
    from wbc_nnabla import datasets
    built = tmp_path / "built"
    datasets.build_dataset(fileio.demo_data(), built, background="keep", size=32, total=36, progress=False)
    record = quantize.given_calibration_cells(built / "valid.csv").record()
    assert record["origins"], "the manifest's source files are part of the calibration cells"
    source = record["origins"][0]["path"]
    with pytest.raises(quantize.CalibrationOverlap, match=Path(source).name):
        quantize.check_disjoint(record, [source], "test")
    others = [p for p in fileio.read_cells(fileio.demo_data())["path"]
              if str(Path(p).resolve()) not in {o["path"] for o in record["origins"]}]
    quantize.check_disjoint(record, others, "test")              # the other demo cells are fine


def test_auto_follows_the_measured_choice_and_falls_back_to_fp32(trained, tmp_path, monkeypatch, caplog):
    model, ds = trained
    choice = tmp_path / "choice.json"
    choice.write_text(json.dumps({"order": [["onnxruntime", "int8"], ["opencv", "fp32"]]}))
    monkeypatch.setattr(quantize, "CHOICE_FILE", choice)
    df = predictor.predict(model, ds / "train.csv", progress=False)
    assert (df.attrs["backend"], df.attrs["precision"]) == ("onnxruntime", "int8")
    with caplog.at_level(logging.WARNING):
        df = predictor.predict(model, ds / "valid.csv", progress=False)    # its calibration cells: fp32
    assert (df.attrs["backend"], df.attrs["precision"]) == ("opencv", "fp32") and df.attrs["int8"] is None
    assert "int8 not used" in caplog.text
    alone = tmp_path / "alone" / "model.nnp"                  # no config.json beside it: no calibration cells
    alone.parent.mkdir()
    shutil.copy(model, alone)
    assert predictor.load_backend(alone).name == "opencv"
    with pytest.raises(quantize.NoCalibrationCells, match="config.json"):
        predictor.load_backend(alone, precision="int8")
    choice.write_text(json.dumps({"order": [["opencv", "fp32"], ["onnxruntime", "int8"]]}))
    assert predictor.load_backend(model).precision == "fp32"


def test_own_calibration_cells_must_be_the_ones_the_model_recorded(trained, tmp_path):
    model, ds = trained
    other = tmp_path / "ds"
    shutil.copytree(ds, other)
    rows = (other / "valid.csv").read_text().splitlines()
    (other / "valid.csv").write_text("\n".join([rows[0]] + rows[:0:-1]) + "\n")     # the rows reversed
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(model, copy / "model.nnp")
    cfg = json.loads((model.parent / "config.json").read_text())
    cfg["config"]["dataset_dir"] = str(other)
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(quantize.NoCalibrationCells, match="labels differ"):
        predictor.load_backend(copy / "model.nnp", precision="int8")


def test_the_cached_int8_file_is_rebuilt_when_the_model_changes(trained, tmp_path):
    model, ds = trained
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.nnp", "config.json"):
        shutil.copy(model.parent / name, run / name)
    first = predictor.load_backend(run / "model.nnp", precision="int8")
    made = first.onnx_path.stat().st_mtime_ns
    again = predictor.load_backend(run / "model.nnp", precision="int8")
    assert again.onnx_path == first.onnx_path and again.onnx_path.stat().st_mtime_ns == made   # reused
    assert first.onnx_path.with_suffix(".json").is_file()                                       # its check
    params, meta = modelfile.read_model(run / "model.nnp")
    params["fc/affine/b"] = params["fc/affine/b"] + np.float32(0.05)   # retrained, same name and cells
    modelfile.save_nnp(run / "model.nnp", params, meta)
    changed = predictor.load_backend(run / "model.nnp", precision="int8")
    assert changed.onnx_path != first.onnx_path and changed.onnx_path.is_file()
    assert changed.int8["model_sha256"] == fileio.file_sha256(run / "model.nnp") != first.int8["model_sha256"]
    checks = set(cache_dir().glob("*-int8-*.json"))
    try:                                         # other calibration cells: another check (and file, if accepted)
        predictor.load_backend(run / "model.nnp", precision="int8", calibration=ds / "train.csv")
    except quantize.Int8Refused:
        pass
    assert len(set(cache_dir().glob("*-int8-*.json")) - checks) == 1


def test_int8_less_accurate_than_fp32_is_refused_once_and_for_all(trained, tmp_path):
    """A deliberately poor calibration: the 12 cells on which the model hesitates most, labelled as fp32
    calls them (fp32 accuracy 1 by construction), plus two noise images that stretch every activation
    range; int8 loses cells there and is refused with both figures; the refusal is stored."""
    import cv2
    model, ds = trained
    fp32 = predictor.predict(model, ds / "train.csv", backend="onnxruntime", precision="fp32", progress=False)
    top = np.sort(fp32[list(PROB_COLUMNS)].to_numpy(), axis=1)
    hesitant = fp32.assign(margin=top[:, -1] - top[:, -2]).nsmallest(12, "margin")
    rng = np.random.default_rng(0)
    noise = []
    for i in range(2):
        noise.append(str(tmp_path / f"noise{i}.png"))
        cv2.imwrite(noise[-1], rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    calls = predictor.predict(model, pd.DataFrame({"path": noise}), backend="onnxruntime", precision="fp32",
                              progress=False)
    cal = tmp_path / "poor.csv"
    pd.DataFrame({"path": list(hesitant["path"]) + noise,
                  "label": list(hesitant["pred6"]) + list(calls["pred6"])}).to_csv(cal, index=False)
    with pytest.raises(quantize.Int8Refused, match=r"int8 accuracy 0\.\d+ is 0\.\d+ below fp32's 1\.0000") as first:
        predictor.predict(model, ds / "valid.csv", precision="int8", calibration=cal, progress=False)
    with pytest.raises(quantize.Int8Refused) as second:                  # not checked again: the stored figures
        predictor.predict(model, ds / "valid.csv", precision="int8", calibration=cal, progress=False)
    assert str(second.value) == str(first.value)
    refused = [p for p in cache_dir().glob("*-int8-*.json")
               if str(cal) in json.loads(p.read_text())["calibration"]["source"]]
    assert len(refused) == 1 and not refused[0].with_suffix(".onnx").exists()    # the check kept, no int8 file
    record = json.loads(refused[0].read_text())
    assert record["fp32_accuracy"] == 1.0 and record["drop"] > quantize.MAX_ACCURACY_DROP and record["n"] == 14


def test_the_accuracy_rule_and_the_choice():
    assert quantize.accuracy_rule(0.900, 0.895) and quantize.accuracy_rule(0.5, 0.6)
    assert not quantize.accuracy_rule(0.900, 0.8949)
    rates = {("opencv", "fp32"): 20.0, ("onnxruntime", "fp32"): 22.0, ("onnxruntime", "int8"): 45.0}
    fine = dict(fp32_accuracy=0.9, int8_accuracy=0.899)
    choice = quantize.choice_from_measurement(rates, {"a": fine, "b": fine})
    assert choice["order"][0] == ["onnxruntime", "int8"] and choice["int8_rule_holds_on_every_set"]
    choice = quantize.choice_from_measurement(rates, {"a": fine, "b": dict(fp32_accuracy=0.8, int8_accuracy=0.79)})
    assert choice["order"] == [["onnxruntime", "fp32"], ["opencv", "fp32"]]
    a = dict(fp32_accuracy=0.80, int8_accuracy=0.80, same_class=0.99, max_prob_diff=0.05)
    assert quantize.choose(dict(a, int8_accuracy=0.81), dict(a, same_class=0.995)) == "per_channel"  # closer to fp32
    assert quantize.choose(a, dict(a, int8_accuracy=0.79)) == "per_tensor"         # per channel breaks the rule
    assert quantize.choose(a, dict(a, max_prob_diff=0.04)) == "per_channel"
    assert quantize.choose(dict(a, int8_accuracy=0.78), dict(a, int8_accuracy=0.77)) == "per_tensor"  # neither


def test_int8_without_onnxruntime_names_the_extra(trained, tmp_path, monkeypatch, capsys):
    model, ds = trained
    monkeypatch.setitem(sys.modules, "onnxruntime", None)               # as if not installed
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    rc = cli.main(["predict", str(model), str(ds / "train.csv"), str(tmp_path / "p.csv"), "--precision", "int8",
                   "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install -e '.[onnxruntime]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.csv").exists()


def test_cli_predict_int8(trained, tmp_path, capsys):
    model, ds = trained
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(model), str(ds / "train.csv"), str(out), "--precision", "int8",
                     "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "backend: onnxruntime int8" in text and "int8 (per " in text and "checked on" in text
    config = json.loads(out.with_suffix(".json").read_text())
    assert config["precision"] == "int8" and config["int8"]["n"] == 36
