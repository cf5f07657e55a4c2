"""Training (section II.4): AdaBound, ImageAugmentation, monitors, .nnp export, resume, fine-tuning.

Tiny runs only (32-64 px, a few iterations) on NNC datasets built from the
embedded demo cells.
"""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")
import nnabla.solvers as S  # noqa: E402

from helpers import TINY_TRAIN as FAST, cross_entropy_of, demo_nnc_dataset  # noqa: E402
from wbc_nnabla import checkpoint, classes, fileio, modelfile, models, training  # noqa: E402
from wbc_nnabla.cli.train import train_settings
from wbc_nnabla.recipe import TrainConfig  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny(tiny_dataset):
    return tiny_dataset                                         # 12 train, 6 valid (conftest)


@pytest.fixture
def model_a(tiny_model):
    return tiny_model                                           # 2 epochs of FAST on tiny (conftest)


# ----------------------------------------------------------------------------- AdaBound


def _adabound_reference(w, grads, lrs, base_lr, final_lr, gamma, b1, b2, eps, wd):
    """AdaBound as in the official code (Luo et al., ICLR 2019, Luolc/AdaBound adabound.py), NumPy."""
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g + wd * w
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        fl = final_lr * lr / base_lr
        lower = fl * (1 - 1 / (gamma * t + 1))
        upper = fl * (1 + 1 / (gamma * t))
        w = w - np.clip(step / (np.sqrt(v) + eps), lower, upper) * m
    return w


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adabound_matches_official_reference(wd):
    rng = np.random.RandomState(0)
    w0 = rng.randn(5, 7).astype(np.float32)
    grads = [rng.randn(5, 7).astype(np.float32) * s for s in (1, 0.1, 3, 1e-3, 1, 0.5, 2, 1)]
    lrs = [1e-2] * 4 + [5e-3] * 4          # a learning-rate change scales final_lr too
    cfg = dict(final_lr=0.1, gamma=0.3, beta1=0.8, beta2=0.99, eps=1e-6)   # gamma large: bounds bite
    p = nn.Variable.from_numpy_array(w0.copy(), need_grad=True)
    solver = S.AdaBound(alpha=lrs[0], **cfg)
    solver.set_parameters({"w": p})
    for g, lr in zip(grads, lrs):
        solver.set_learning_rate(lr)
        solver.zero_grad()
        p.g = g
        if wd:
            solver.weight_decay(wd)
        solver.update()
    ref = _adabound_reference(w0.astype(np.float64), grads, lrs, lrs[0], cfg["final_lr"], cfg["gamma"],
                              cfg["beta1"], cfg["beta2"], cfg["eps"], wd)
    np.testing.assert_allclose(p.d, ref, rtol=2e-5, atol=1e-6)
    # the bounds were active in some steps (else this would only test Adam)
    assert not np.allclose(ref, _adabound_reference(w0.astype(np.float64), grads, lrs, lrs[0], 1e6, 1e-9,
                                                    cfg["beta1"], cfg["beta2"], cfg["eps"], wd))


def test_make_solver_uses_config():
    nn.clear_parameters()
    models.clear_scope(training.SCOPE)
    training.build_graph("resnet18", 6, 1, 32)
    solver = training.make_solver(training.AdaBoundConfig(alpha=0.002))
    assert solver.name == "AdaBound" and math.isclose(solver.learning_rate(), 0.002, rel_tol=1e-6)
    assert len(solver.get_parameters()) == len(training.parameters(grad_only=True))


# ----------------------------------------------------------------------------- outputs


def test_outputs_and_monitors(model_a):
    for name in ("Cost", "Training-Error", "Validation-Error", "Validation-Misclassification"):
        lines = (model_a / "monitor" / f"{name}.series.txt").read_text().split("\n")
        assert [ln.split()[0] for ln in lines if ln] == ["1", "2"]
    tiles = sorted((model_a / "monitor" / "Augmented-training-batch").glob("*.png"))
    assert len(tiles) == 2
    import pandas as pd
    curve = pd.read_csv(model_a / "learning_curve.csv")
    assert list(curve.epoch) == [1, 2] and curve[["cost", "training_error", "validation_error"]].notna().all().all()
    assert (model_a / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    cfg = json.loads((model_a / "config.json").read_text())
    assert cfg["config"]["solver"]["final_lr"] == 0.1 and "nnabla" in cfg["environment"]
    meta = modelfile.read_meta(model_a / "model.nnp")
    assert meta["arch"] == "resnet18" and meta["class_names"] == list(classes.CLASSES6)
    assert meta["input_size"] == 32 and meta["training"]["epoch"] in (1, 2)
    assert set(modelfile.load_parameters(model_a / "model.h5")) == set(modelfile.load_parameters(model_a / "model.nnp"))


def test_model_stores_its_validation_cells_for_the_pending_cutoff(model_a, tiny_dataset):
    from wbc_nnabla import predictions, predictor
    meta = modelfile.read_meta(model_a / "model.nnp")
    cal = meta[predictions.CALIBRATION_KEY]
    labels, probs, names = predictions.read_calibration(cal, "model.nnp")
    assert names == list(classes.CLASSES6) and f"epoch {meta['training']['epoch']}" in cal["source"]
    _, valid_labels = training.read_split(tiny_dataset / "valid.csv")
    assert labels.tolist() == list(valid_labels)
    # the exported model's own probabilities of those cells, as `predict` gives them
    df = predictor.predict(model_a / "model.nnp", tiny_dataset / "valid.csv", progress=False)
    np.testing.assert_allclose(df[[predictions.PROB_PREFIX + c for c in classes.CLASSES6]].to_numpy(), probs,
                               atol=1e-4)
    assert df.attrs[predictions.CALIBRATION_KEY] == cal          # and they go into the run JSON


def test_nnp_matches_test_graph_in_nnploader_and_cli(model_a, tmp_path):
    from nnabla.utils.nnp_graph import NnpLoader
    rng = np.random.RandomState(0)
    xin = rng.rand(2, 3, 32, 32).astype(np.float32)
    # training graph in test mode with the exported parameters
    models.clear_scope(training.SCOPE)
    g = training.build_graph("resnet18", 6, 2, 32, test=True)
    training.initialise(training.parameters(), init=model_a / "model.h5")       # every parameter, strictly
    g.x.d = xin
    g.logits.forward()
    z = g.logits.d
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    nn.clear_parameters()
    net = NnpLoader(str(model_a / "model.nnp")).get_network("inference", batch_size=2)
    net.inputs["x"].d = xin
    y = net.outputs["y"]
    y.forward()
    np.testing.assert_allclose(y.d, want, rtol=1e-4, atol=1e-6)
    # nnabla's command-line runtime (the C++ `nbla` binary is not in the pip wheel)
    cli = Path(sys.executable).with_name("nnabla_cli")
    if not cli.exists():
        pytest.skip("nnabla_cli not installed beside this Python")
    xin[:1].tofile(tmp_path / "x.bin")
    r = subprocess.run([str(cli), "infer", "-c", str(model_a / "model.nnp"), "-o", str(tmp_path / "y"),
                        "-b", "1", str(tmp_path / "x.bin")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = np.fromfile(tmp_path / "y_0.bin", np.float32)
    np.testing.assert_allclose(out, want[0], rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- resume, fine-tune, failures


def test_resume_reaches_same_parameters(tiny, tmp_path):
    """3 epochs straight == 1 epoch, stop, resume for 2 more (augmentation on: per-epoch seeded)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    one = dict(FAST, max_iterations=1)
    training.train(tiny, straight, TrainConfig(epochs=3, **one))
    training.train(tiny, split, TrainConfig(epochs=1, **one))
    with pytest.raises(training.TrainingError, match="--resume"):
        training.train(tiny, split, TrainConfig(epochs=3, **one))
    training.train(tiny, split, TrainConfig(epochs=3, **one), resume=True)
    a = modelfile.load_parameters(straight / "checkpoints" / "epoch0003" / "params.h5")
    b = modelfile.load_parameters(split / "checkpoints" / "epoch0003" / "params.h5")
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    ca = (straight / "learning_curve.csv").read_text().splitlines()
    cb = (split / "learning_curve.csv").read_text().splitlines()
    assert len(ca) == len(cb) == 4
    assert [r.split(",")[1:4] for r in ca] == [r.split(",")[1:4] for r in cb]   # cost and errors
    assert (split / "monitor" / "Cost.series.txt").read_text() == (straight / "monitor" / "Cost.series.txt").read_text()


def test_finetune_starts_from_model_a_exactly(model_a, tiny, tmp_path):
    models.clear_scope(training.SCOPE)
    training.build_graph("resnet18", 6, 4, 32, aug=training.Augmentation(), aug_seed=0)
    params = training.parameters()
    info = training.initialise(params, pretrained="imagenet", init=model_a / "model.nnp")   # init wins
    a = modelfile.load_parameters(model_a / "model.nnp")
    assert set(params) == set(a) and "fc/affine/W" in a
    for k in a:
        np.testing.assert_array_equal(params[k].d, a[k], err_msg=k)
    assert info.startswith("init")
    out = tmp_path / "B"
    training.train(tiny, out, TrainConfig(epochs=1, init=model_a / "model.nnp", **FAST))
    assert json.loads((out / "config.json").read_text())["initialisation"] == info


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny, tmp_path, monkeypatch):
    """NaN inputs in epoch 2 (the Cost stays finite: nnabla's ReLU maps NaN to 0, but the gradients carry it
    into the weights) stop the run at the end of that epoch, before anything of it is saved, and keep epoch
    1's checkpoint, which is finite (issue 49). Steps that overflow float32 stop it after epoch 1: without a
    good checkpoint nothing partial is left. (A NaN Cost: test_nonfinite.py.)"""
    out = tmp_path / "nan"
    real, calls = training.batches, []

    def nan_from_epoch_2(*a, **k):                               # the training stream of each epoch
        calls.append(1)
        for xb, yb, n in real(*a, **k):
            yield (xb * np.float32(np.nan) if len(calls) > 1 else xb), yb, n

    monkeypatch.setattr(training, "batches", nan_from_epoch_2)
    with pytest.raises(training.TrainingError, match=r"non-finite parameter conv1/conv/W \(nan\) after epoch 2: "
                                                     r"training stopped; last good checkpoint kept: checkpoints/epoch0001"):
        training.train(tiny, out, TrainConfig(epochs=3, **dict(FAST, max_iterations=1)))
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 1
    assert modelfile.first_nonfinite(modelfile.load_parameters(out / "checkpoints" / "epoch0001" / "params.h5")) is None
    monkeypatch.setattr(training, "batches", real)
    huge = training.AdaBoundConfig(alpha=1e38, final_lr=1e38)   # steps overflow float32
    with pytest.raises(training.TrainingError, match="non-finite parameter .* after epoch 1: .*kept: none"):
        training.train(tiny, tmp_path / "huge", TrainConfig(epochs=3, solver=huge, **dict(FAST, max_iterations=1)))
    assert not (tmp_path / "huge").exists()


def test_bad_inputs_fail_clearly(tiny, tmp_path):
    with pytest.raises(training.TrainingError, match="train.csv"):
        training.train(tmp_path, tmp_path / "o", TrainConfig(epochs=1, **FAST))
    with pytest.raises(training.TrainingError, match="cudnn.*pip install"):
        training.get_context("cudnn")
    with pytest.raises(training.TrainingError, match="nothing to resume"):
        training.train(tiny, tmp_path / "fresh", TrainConfig(epochs=1, **FAST), resume=True)
    # an unreadable image fails with its name (the loader thread must not hang the run)
    bad = tmp_path / "bad"
    bad.mkdir()
    good = fileio.read_cells(tiny / "train.csv").path.tolist()
    (bad / "broken.jpg").write_bytes(Path(good[0]).read_bytes()[:300])
    fileio.write_nnc_csv(bad / "train.csv", [bad / "broken.jpg"] + good[:3], [0, 1, 2, 3])
    fileio.write_nnc_csv(bad / "valid.csv", good[:2], [0, 1])
    with pytest.raises(fileio.ImageReadError, match="broken.jpg"):
        training.train(bad, tmp_path / "o2", TrainConfig(epochs=1, **FAST))


def test_weight_init_is_recorded_and_guarded_on_resume(model_a, tiny, tmp_path):
    from wbc_nnabla import cli
    assert json.loads((model_a / "config.json").read_text())["config"]["weight_init"] == "glorot"
    with pytest.raises(training.TrainingError, match="weight_init 'xavier'"):
        training.train(tiny, tmp_path / "x", TrainConfig(epochs=1, weight_init="xavier", **FAST))
    with pytest.raises(training.TrainingError, match="weight_init.*was 'glorot'"):
        training.train(tiny, model_a, TrainConfig(epochs=2, weight_init="he", **FAST), resume=True)
    he = training.train(tiny, tmp_path / "he", TrainConfig(epochs=1, weight_init="he", **dict(FAST, max_iterations=1)))
    assert he["config"]["weight_init"] == "he"
    assert train_settings(cli.build_parser().parse_args(["train", "d", "o"])).weight_init == "glorot"
    assert train_settings(cli.build_parser().parse_args(["train", "d", "o", "--set", "weight_init=he"])).weight_init == "he"


def test_tiny_training_on_real_crops_drops_loss(tmp_path):
    ds = demo_nnc_dataset(tmp_path / "ds", 4, 1)                           # 24 train images, 64 px
    s = training.train(ds, tmp_path / "run", TrainConfig(
        epochs=3, size=64, batch_size=6, pretrained="none", progress=False,
        augmentation=training.Augmentation(enabled=False), train_eval_limit=12))
    h = s["history"]
    assert h[-1]["training_error"] < h[0]["training_error"]
    assert h[-1]["cost"] < h[0]["cost"]


def test_recalibrate_bn_sets_clean_batch_statistics(tiny):
    """Precise BN: bn1's running mean becomes the mean over clean batches of conv1's per-channel mean."""
    import nnabla.parametric_functions as PF

    models.clear_scope(training.SCOPE)
    size, bs = 32, 4
    g = training.build_graph("resnet18", 6, bs, size)      # clean batch-statistics graph
    params = training.parameters()
    rng = np.random.default_rng(0)
    for k, v in params.items():  # non-trivial weights and stale statistics
        if not (k.endswith("/mean") or k.endswith("/var")) and not k.startswith("preprocess"):
            v.d = rng.normal(0, 0.05, v.shape)
        elif k.endswith("/mean"):
            v.d = 5.0
    paths, labels = training.read_split(tiny / "train.csv")
    loader = training.ImageLoader(paths, labels, size)
    n = training.recalibrate_bn(g, loader, bs, np.arange(8))
    assert n == 2
    # independent expectation: conv1 over the same clean images, in fixed order
    with nn.parameter_scope(training.SCOPE):
        x = nn.Variable((bs, 3, size, size))
        h = PF.convolution(models.normalize(x), 64, (7, 7), pad=(3, 3), stride=(2, 2), with_bias=False,
                           name="conv1")
    means = []
    for i in range(n):
        x.d = np.stack([loader.image(j) for j in range(i * bs, (i + 1) * bs)]).astype(np.float32) / 255
        h.forward()
        means.append(h.d.mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(params["bn1/bn/mean"].d.reshape(-1), np.mean(means, axis=0), rtol=1e-3, atol=1e-4)
    assert not np.allclose(params["layer4/1/bn2/bn/mean"].d, 5.0)


def test_bn_recalibration_is_on_by_default_and_guarded_on_resume(tiny, tmp_path):
    """Default: precise BN before each evaluation (recorded); 0 keeps NNC's running statistics.

    The exported model differs only in BatchNorm statistics between the two, and a resume
    may not switch the setting (an old config without the key counts as 0).
    """
    on, off = tmp_path / "on", tmp_path / "off"
    s = training.train(tiny, on, TrainConfig(epochs=1, **FAST))
    assert s["config"]["bn_recalibration"] == training.BN_RECALIBRATION_IMAGES > 0
    training.train(tiny, off, TrainConfig(epochs=1, bn_recalibration=0, **FAST))
    a, b = modelfile.load_parameters(on / "model.nnp"), modelfile.load_parameters(off / "model.nnp")
    differ = {k for k in a if not np.array_equal(a[k], b[k])}
    assert differ and all(k.endswith("/mean") or k.endswith("/var") for k in differ)
    with pytest.raises(training.TrainingError, match="bn_recalibration.*was 0"):
        training.train(tiny, off, TrainConfig(epochs=2, **FAST), resume=True)
    cfg = json.loads((off / "config.json").read_text())
    del cfg["config"]["bn_recalibration"]                          # a run written before the option
    (off / "config.json").write_text(json.dumps(cfg))
    s = training.train(tiny, off, TrainConfig(epochs=2, bn_recalibration=0, **FAST), resume=True)
    assert len(s["history"]) == 2


def test_bn_sample_is_stratified_and_mixes_every_batch():
    """The precise-BN sample of a class-sorted split holds every class in proportion, mixed per batch.

    Before the fix the sample was the first N rows: of a CSV sorted by class, only the first classes.
    """
    labels = np.repeat(np.arange(6), [40, 40, 40, 40, 40, 80])        # sorted by class, Segment twice as many
    rows = training.sample_rows(labels, 140, 28, seed=5)
    assert len(rows) == 140 and len(set(rows.tolist())) == 140
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=6), [20, 20, 20, 20, 20, 40])
    for b in range(5):                                                 # every batch of 28 sees >= 4 classes
        assert len(set(labels[rows[b * 28:(b + 1) * 28]].tolist())) >= 4
    np.testing.assert_array_equal(rows, training.sample_rows(labels, 140, 28, seed=5))   # seeded
    assert not np.array_equal(rows, training.sample_rows(labels, 140, 28, seed=6))


def test_training_on_class_sorted_csv_recalibrates_on_all_classes(tmp_path):
    """train() on a train.csv grouped by class: the recorded BN sample covers all six classes in proportion."""
    ds = demo_nnc_dataset(tmp_path / "ds", 4, 1)                                # 24 images, rows grouped by class
    _, y = training.read_split(ds / "train.csv")
    assert (np.diff(y) != 0).sum() == 5                                 # really sorted: 6 runs
    s = training.train(ds, tmp_path / "run", TrainConfig(epochs=1, bn_recalibration=12,
                                                         **{**FAST, "train_eval_limit": 6}))
    bn = s["config"]["bn_sample"]
    assert bn["n"] == 12 and set(bn["per_class"].values()) == {2}
    np.testing.assert_array_equal(np.bincount(y[bn["rows"]], minlength=6), [2] * 6)
    ev = s["config"]["train_eval_sample"]
    np.testing.assert_array_equal(np.bincount(y[ev["rows"]], minlength=6), [1] * 6)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["bn_sample"] == bn


def test_train_leaves_process_state_alone(tiny, tmp_path):
    """NumPy's global generator, nnabla's default context and matplotlib's backend are the caller's."""
    import matplotlib

    np.random.seed(123)
    before = np.random.get_state()
    ctx, backend = nn.get_current_context(), matplotlib.get_backend()
    training.train(tiny, tmp_path / "run", TrainConfig(epochs=1, **dict(FAST, max_iterations=1)))
    after = np.random.get_state()
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and after[2:] == before[2:]
    assert str(nn.get_current_context()) == str(ctx) and matplotlib.get_backend() == backend


def test_checkpoint_rng_state_round_trips_through_json():
    rng = np.random.RandomState(7)
    rng.normal(size=3)                                   # leaves a cached Gaussian
    saved = json.loads(json.dumps(checkpoint.rng_state(rng)))
    want = rng.normal(size=5)
    other = np.random.RandomState(0)
    checkpoint.set_rng_state(other, saved)
    np.testing.assert_array_equal(other.normal(size=5), want)


# ----------------------------------------------------------------------------- GroupNorm (--norm group)


def test_groupnorm_training_records_norm_and_skips_bn_recalibration(tiny_gn_model):
    """A tiny ``--norm group`` run: GroupNorm parameters only, ``norm`` in the config and the model,
    and BN recalibration recorded as a no-op (nothing sampled for it)."""
    s = json.loads((tiny_gn_model / "config.json").read_text())
    assert s["config"]["norm"] == "group" and s["config"]["bn_recalibration"] == 0
    assert s["config"]["bn_sample"] is None
    assert "no-op with norm group" in s["config"]["bn_recalibration_skipped"]
    assert [h["epoch"] for h in s["history"]] == [1, 2] and all(np.isfinite(h["cost"]) for h in s["history"])
    params, meta = modelfile.read_model(tiny_gn_model / "model.nnp")
    assert meta["norm"] == "group" and modelfile.read_meta(tiny_gn_model / "model.nnp")["norm"] == "group"
    assert "layer2/0/bn1/group_normalization/gamma" in params
    assert not [k for k in params if "/bn/" in k or k.endswith("/mean") or k.endswith("/var")]
    # the .h5 (no description) is recognised as GroupNorm from its parameter names
    assert modelfile.read_model(tiny_gn_model / "model.h5")[1]["norm"] == "group"
    # trained: GroupNorm scale/shift moved away from their initial 1 / 0
    assert np.abs(params["layer1/0/bn1/group_normalization/beta"]).max() > 1e-5


def test_groupnorm_nnp_reproduces_the_validation_error_through_predict(tiny_gn_model, tiny, tmp_path):
    """``predict`` (nnabla backend) on the GroupNorm model's validation split gives the recorded Validation
    Error; ``nnabla_cli infer`` gives the same probabilities."""
    from wbc_nnabla import predictor
    s = json.loads((tiny_gn_model / "config.json").read_text())
    df = predictor.predict(tiny_gn_model / "model.nnp", tiny / "valid.csv", backend="nnabla", progress=False)
    probs = df[[f"prob_{c}" for c in classes.CLASSES6]].to_numpy()
    assert len(df) == 6 and cross_entropy_of(df) == pytest.approx(s["best"]["validation_error"], rel=1e-4)
    # nnabla's own command-line runtime runs the GroupNorm .nnp too, to the same probabilities
    cli = Path(sys.executable).with_name("nnabla_cli")
    if not cli.exists():
        pytest.skip("nnabla_cli not installed beside this Python")
    x = predictor.load_input(df["path"][0], 32)[None]
    x.tofile(tmp_path / "x.bin")
    r = subprocess.run([str(cli), "infer", "-c", str(tiny_gn_model / "model.nnp"), "-o", str(tmp_path / "y"),
                        "-b", "1", str(tmp_path / "x.bin")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    np.testing.assert_allclose(np.fromfile(tmp_path / "y_0.bin", np.float32), probs[0], rtol=1e-4, atol=1e-6)


def test_groupnorm_is_guarded_on_resume_and_init(tiny_gn_model, model_a, tiny, tmp_path):
    with pytest.raises(training.TrainingError, match="norm 'layer'"):
        training.train(tiny, tmp_path / "x", TrainConfig(epochs=1, norm="layer", **FAST))
    with pytest.raises(training.TrainingError, match=r"different .*norm \(was .*'batch'\)"):
        training.train(tiny, model_a, TrainConfig(epochs=3, norm="group", **FAST), resume=True)
    with pytest.raises(training.TrainingError, match="--init .*a norm group model; this run has norm batch"):
        training.train(tiny, tmp_path / "y", TrainConfig(epochs=1, init=tiny_gn_model / "model.nnp", **FAST))
    assert not (tmp_path / "y").exists()
    # fine-tuning a GroupNorm model with --norm group starts from its every parameter
    s = training.train(tiny, tmp_path / "B", TrainConfig(epochs=1, norm="group", init=tiny_gn_model / "model.nnp",
                                                         **dict(FAST, max_iterations=1)))
    assert s["initialisation"].startswith("init") and s["config"]["norm"] == "group"
    from wbc_nnabla import cli
    assert train_settings(cli.build_parser().parse_args(["train", "d", "o"])).norm == "batch"
    assert train_settings(cli.build_parser().parse_args(["train", "d", "o", "--set", "norm=group"])).norm == "group"


def test_groupnorm_resume_reaches_same_parameters(tiny, tmp_path):
    """2 GroupNorm epochs straight == 1 epoch, stop, resume to 2."""
    one = dict(FAST, max_iterations=1)
    straight, split = tmp_path / "straight", tmp_path / "split"
    training.train(tiny, straight, TrainConfig(epochs=2, norm="group", **one))
    training.train(tiny, split, TrainConfig(epochs=1, norm="group", **one))
    training.train(tiny, split, TrainConfig(epochs=2, norm="group", **one), resume=True)
    a = modelfile.load_parameters(straight / "checkpoints" / "epoch0002" / "params.h5")
    b = modelfile.load_parameters(split / "checkpoints" / "epoch0002" / "params.h5")
    assert set(a) == set(b) and models.norm_of(a) == "group"
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


# ----------------------------------------------------------------------------- weight averaging (--average-epochs)


def test_weight_average_is_the_running_mean_of_what_it_is_given():
    rng = np.random.RandomState(0)
    steps = [rng.randn(3, 4).astype(np.float32) for _ in range(5)]
    avg = training.WeightAverage(first_epoch=7)
    for w in steps:
        avg.add({"conv/W": nn.Variable.from_numpy_array(w)})
    assert avg.updates == 5
    np.testing.assert_allclose(avg.mean["conv/W"], np.mean(steps, axis=0), rtol=1e-6, atol=1e-6)


def test_average_epochs_exports_the_mean_of_every_update_with_its_own_bn_statistics(tiny, tmp_path, monkeypatch):
    """3 epochs of 2 updates, the last 2 averaged: model.nnp = the mean of the 4 weights after each update."""
    seen = []
    add = training.WeightAverage.add

    def recording_add(self, params):
        seen.append({k: v.d.copy() for k, v in params.items()})
        add(self, params)

    monkeypatch.setattr(training.WeightAverage, "add", recording_add)
    out = tmp_path / "swa"
    s = training.train(tiny, out, TrainConfig(epochs=3, average_epochs=2, **FAST))
    assert len(seen) == 4                                       # epochs 2 and 3, 2 updates each
    assert s["best"]["averaged_epochs"] == [2, 3] and s["best"]["averaged_updates"] == 4
    assert s["config"]["average_epochs"] == 2
    assert modelfile.read_meta(out / "model.nnp")["training"]["averaged_epochs"] == [2, 3]
    exported = modelfile.load_parameters(out / "model.nnp")
    raw = modelfile.load_parameters(out / "checkpoints" / "epoch0003" / "params.h5")
    for k in seen[0]:
        np.testing.assert_allclose(exported[k], np.mean([w[k] for w in seen], axis=0), rtol=1e-5, atol=1e-6,
                                   err_msg=k)
    assert any(not np.allclose(exported[k], raw[k]) for k in seen[0])
    # BatchNorm running mean/var are not averaged: re-estimated for the mean weights, so not the raw run's
    stats = [k for k in exported if k.endswith(("/mean", "/var"))]
    assert stats and not set(stats) & set(seen[0])
    assert any(not np.allclose(exported[k], raw[k]) for k in stats)
    fixed = set(exported) - set(stats) - set(seen[0])           # the input's fixed scale and bias
    assert all(np.array_equal(exported[k], raw[k]) for k in fixed)
    # the stored validation cells are the exported (averaged) model's own, as `predict` gives them
    from wbc_nnabla import predictions, predictor
    cal = modelfile.read_meta(out / "model.nnp")[predictions.CALIBRATION_KEY]
    assert "averaged over epochs 2-3" in cal["source"]
    _, probs, _ = predictions.read_calibration(cal, "model.nnp")
    df = predictor.predict(out / "model.nnp", tiny / "valid.csv", progress=False)
    np.testing.assert_allclose(df[[predictions.PROB_PREFIX + c for c in classes.CLASSES6]].to_numpy(), probs,
                               atol=1e-4)


def test_average_epochs_resumes_exactly_and_refuses_a_moved_window(tiny, model_a, tmp_path):
    straight, split, late = tmp_path / "straight", tmp_path / "split", tmp_path / "late"
    training.train(tiny, straight, TrainConfig(epochs=3, average_epochs=2, **FAST))
    training.train(tiny, split, TrainConfig(epochs=2, average_epochs=1, **FAST))    # the window starts at epoch 2
    training.train(tiny, split, TrainConfig(epochs=3, average_epochs=2, **FAST), resume=True)
    a, b = (modelfile.load_parameters(d / "model.nnp") for d in (straight, split))
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    with pytest.raises(training.TrainingError, match="weight averaging began at epoch 2"):
        training.train(tiny, split, TrainConfig(epochs=4, average_epochs=1, **FAST), resume=True)
    shutil.copytree(model_a, late)                              # 2 epochs of FAST without averaging
    with pytest.raises(training.TrainingError, match="cannot resume with average_epochs 2"):
        training.train(tiny, late, TrainConfig(epochs=3, average_epochs=2, **FAST), resume=True)


@pytest.mark.parametrize("settings, message", [
    (dict(epochs=3, average_epochs=4), r"average_epochs must be in \[0, epochs = 3\], got 4"),
    (dict(epochs=3, average_epochs=-1), "average_epochs must be in"),
    (dict(epochs=3, average_epochs=2, bn_recalibration=0), "needs bn_recalibration > 0"),
])
def test_average_epochs_out_of_range_is_refused(settings, message, tiny, tmp_path):
    with pytest.raises(training.TrainingError, match=message):
        training.train(tiny, tmp_path / "x", TrainConfig(**dict(FAST, **settings)))
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- IBN-a (--norm ibn)


def test_ibn_trains_predicts_and_adapts_only_its_batchnorm_half(tiny, tmp_path):
    """A tiny ``--norm ibn`` run: instance normalisation beside BatchNorm in the first normalisation of
    each early block, ``norm`` in the model; ``predict`` through ONNX (the default CPU backend) gives the
    recorded Validation Error, Grad-CAM (which rebuilds the network in nnabla) the same calls and
    ``nnabla_cli infer`` the same probabilities;
    ``adapt`` re-estimates only BatchNorm mean/var, the BatchNorm half of every IBN layer included, and
    leaves the instance-normalisation scale and shift alone."""
    from helpers import tiny_model

    from wbc_nnabla import gradcam, predictor
    from wbc_nnabla.sites import adaptation
    run = tiny_model(tiny, tmp_path / "ibn", norm="ibn")
    s = json.loads((run / "config.json").read_text())
    params, meta = modelfile.read_model(run / "model.nnp")
    assert s["config"]["norm"] == "ibn" == meta["norm"] == modelfile.read_model(run / "model.h5")[1]["norm"]
    assert params["layer1/0/bn1/instance_normalization/gamma"].shape == (1, 32, 1, 1)
    assert params["layer1/0/bn1/bn/mean"].shape == (1, 32, 1, 1)
    assert "layer4/0/bn1/instance_normalization/gamma" not in params and "layer1/0/bn2/bn/mean" in params
    df = predictor.predict(run / "model.nnp", tiny / "valid.csv", backend="auto", progress=False)
    assert cross_entropy_of(df) == pytest.approx(s["best"]["validation_error"], rel=1e-3)
    for r, (_, row) in zip(gradcam.GradCAM(run / "model.nnp").explain(list(df["path"][:2])), df.iterrows()):
        assert r.predicted_name == row["pred6"] and r.probability == pytest.approx(row[f"prob_{row['pred6']}"],
                                                                                    abs=1e-4)
    nnabla_cli = Path(sys.executable).with_name("nnabla_cli")     # nnabla's own runtime runs the .nnp too
    if nnabla_cli.exists():
        predictor.load_input(df["path"][0], 32)[None].tofile(tmp_path / "x.bin")
        r = subprocess.run([str(nnabla_cli), "infer", "-c", str(run / "model.nnp"), "-o", str(tmp_path / "y"),
                            "-b", "1", str(tmp_path / "x.bin")], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        np.testing.assert_allclose(np.fromfile(tmp_path / "y_0.bin", np.float32),
                                   df[[f"prob_{c}" for c in classes.CLASSES6]].to_numpy()[0], rtol=1e-4, atol=1e-5)
    out = tmp_path / "adapted.nnp"
    adaptation.adapt_batchnorm(run / "model.nnp", tiny / "valid.csv", out, max_images=6, min_images=4,
                               batch_size=2, scale=False)
    after = modelfile.load_parameters(out)
    changed = {k for k in params if params[k].tobytes() != after[k].tobytes()}
    assert "layer1/0/bn1/bn/mean" in changed and "layer2/1/bn1/bn/var" in changed
    assert changed and all(k.endswith("/bn/mean") or k.endswith("/bn/var") for k in changed)


# ----------------------------------------------------------------------------- step-size schedule (--schedule)


def test_cosine_step_size_falls_from_alpha_towards_zero():
    from wbc_nnabla.recipe import AdaBoundConfig, step_size
    cos = AdaBoundConfig(alpha=2e-3, schedule="cosine")
    steps = [step_size(cos, i, 10) for i in range(10)]
    assert steps[0] == pytest.approx(2e-3) and steps[5] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(steps, steps[1:])) and 0 < steps[-1] < 2e-3 * 0.03
    assert [step_size(AdaBoundConfig(alpha=2e-3), i, 10) for i in (0, 9)] == [2e-3, 2e-3]
    with pytest.raises(training.TrainingError, match="schedule 'step': choose one of constant, cosine"):
        TrainConfig(solver=AdaBoundConfig(schedule="step")).validate()


def test_cosine_schedule_runs_over_every_update_of_the_run_and_resumes_exactly(tiny, model_a, tmp_path, monkeypatch):
    """2 epochs of 2 updates: each update's step is set from its place in the run's 4 updates; the
    run records the schedule, differs from the constant step (the session's model, the same settings
    otherwise), resumes exactly and refuses other epochs; a constant run never sets the step."""
    from wbc_nnabla.recipe import AdaBoundConfig
    asked = []
    real = training.step_size

    def recording(cfg, done, total):
        asked.append((done, total))
        return real(cfg, done, total)

    monkeypatch.setattr(training, "step_size", recording)
    cos = AdaBoundConfig(schedule="cosine")
    straight, split, const = tmp_path / "straight", tmp_path / "split", tmp_path / "constant"
    s = training.train(tiny, straight, TrainConfig(epochs=2, solver=cos, site_record=True, **FAST))
    assert asked == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert s["config"]["solver"]["schedule"] == "cosine"
    constant = json.loads((model_a / "config.json").read_text())["config"]
    assert _without(constant, "solver", "out_dir") == _without(s["config"], "solver", "out_dir")
    assert dict(constant["solver"], schedule="cosine") == s["config"]["solver"]
    a, c = (modelfile.load_parameters(d / "checkpoints" / "epoch0002" / "params.h5") for d in (straight, model_a))
    assert any(not np.allclose(a[k], c[k]) for k in a)
    shutil.copytree(model_a, const)
    with pytest.raises(training.TrainingError, match="cannot resume with a different solver"):
        training.train(tiny, const, TrainConfig(epochs=3, solver=cos, **FAST), resume=True)
    training.train(tiny, const, TrainConfig(epochs=3, **dict(FAST, max_iterations=1)), resume=True)
    assert len(asked) == 4                                      # the constant step is never set
    real_epoch = training.train_epoch

    def stopped_in_epoch_2(graph, run, data, cfg, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(graph, run, data, cfg, epoch, *rest)

    monkeypatch.setattr(training, "train_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        training.train(tiny, split, TrainConfig(epochs=2, solver=cos, **FAST))
    monkeypatch.setattr(training, "train_epoch", real_epoch)
    training.train(tiny, split, TrainConfig(epochs=2, solver=cos, **FAST), resume=True)
    b = modelfile.load_parameters(split / "checkpoints" / "epoch0002" / "params.h5")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    with pytest.raises(training.TrainingError, match="cannot resume a cosine schedule with epochs 3: the run "
                                                     "was scheduled over 2 epochs"):
        training.train(tiny, split, TrainConfig(epochs=3, solver=cos, **FAST), resume=True)


def _without(record: dict, *keys) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


#: Settings added after runs were already written, each with a value other than its default: a
#: config.json without the setting had it off (its default), so resuming with this value is refused.
LATER_SETTINGS = [("augmentation", "hue", dict(augmentation=training.Augmentation(hue=10))),
                  ("augmentation", "blur", dict(augmentation=training.Augmentation(blur=0.5))),
                  ("augmentation", "randconv", dict(augmentation=training.Augmentation(randconv=0.5))),
                  ("augmentation", "mixstyle", dict(augmentation=training.Augmentation(mixstyle=0.5))),
                  ("augmentation", "fourier", dict(augmentation=training.Augmentation(fourier=0.5),
                                                   style_cells=fileio.demo_data())),
                  ("solver", "schedule", dict(solver=training.AdaBoundConfig(schedule="cosine"))),
                  ("config", "weight_init", dict(weight_init="he")),
                  ("config", "norm", dict(norm="group")),
                  ("config", "label_smoothing", dict(label_smoothing=0.1)),
                  ("config", "mixup", dict(mixup=0.2))]


def test_a_run_saved_before_later_settings_resumes_with_them_off(model_a, tiny, tmp_path):
    """A config.json without the settings added later (the colour terms, blur, RandConv, MixStyle, Fourier,
    the step-size schedule, weight_init, norm, style_cells, label_smoothing, mixup) had them at their
    defaults: it resumes with the defaults and refuses any other value, naming the setting."""
    out = tmp_path / "old"
    shutil.copytree(model_a, out)
    cfg = json.loads((out / "config.json").read_text())
    for k in ("od_scale", "od_shift", "saturation", "log_gamma", "hue", "color_prob", "blur", "randconv",
              "mixstyle", "fourier"):
        del cfg["config"]["augmentation"][k]
    del cfg["config"]["solver"]["schedule"]
    for k in ("weight_init", "norm", "style_cells", "label_smoothing", "mixup"):
        del cfg["config"][k]
    (out / "config.json").write_text(json.dumps(cfg))
    for where, name, changed in LATER_SETTINGS:
        refused = name if where == "config" else where
        with pytest.raises(training.TrainingError, match=f"cannot resume with a different .*{refused}"):
            training.train(tiny, out, TrainConfig(epochs=3, **changed, **FAST), resume=True)
    s = training.train(tiny, out, TrainConfig(epochs=3, **dict(FAST, max_iterations=1)), resume=True)
    assert len(s["history"]) == 3


# ----------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_is_the_cross_entropy_against_the_smoothed_target(eps):
    """Per image: -sum_c q_c log p_c with q = (1 - eps) one-hot + eps / C (Szegedy et al. 2016)."""
    rng = np.random.RandomState(0)
    z = (rng.randn(5, 6) * 3).astype(np.float32)
    y = np.array([0, 5, 2, 2, 3])
    logits, t = nn.Variable.from_numpy_array(z), nn.Variable.from_numpy_array(y[:, None])
    loss = training.smoothed_cross_entropy(logits, t, eps)
    loss.forward()
    log_p = z - z.max(1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
    q = np.full(z.shape, eps / 6) + (1 - eps) * np.eye(6)[y]
    assert loss.shape == (5, 1)
    np.testing.assert_allclose(loss.d[:, 0], -(q * log_p).sum(1), rtol=1e-5)


@pytest.mark.parametrize("eps", [1.0, -0.1, float("nan")])
def test_label_smoothing_out_of_range_is_refused(eps, tiny, tmp_path):
    with pytest.raises(training.TrainingError, match=r"label_smoothing must be in \[0, 1\)"):
        training.train(tiny, tmp_path / "run", TrainConfig(epochs=1, label_smoothing=eps, **FAST))
    assert not (tmp_path / "run").exists()


def test_label_smoothing_changes_training_only_and_is_guarded_on_resume(tiny, tmp_path):
    """The smoothed run is recorded and trains other weights than the same seed without it; its
    Validation Error is still the plain cross-entropy (recomputed from ``predict``); resume refuses
    another value (a config.json written before the setting: ``test_a_run_saved_before_later_settings...``)."""
    from wbc_nnabla import predictor
    on, off = tmp_path / "on", tmp_path / "off"
    s = training.train(tiny, on, TrainConfig(epochs=1, label_smoothing=0.3, **FAST))
    p = training.train(tiny, off, TrainConfig(epochs=1, **FAST))
    assert s["config"]["label_smoothing"] == 0.3 and p["config"]["label_smoothing"] == 0.0
    assert _without(s["config"], "label_smoothing", "out_dir") == _without(p["config"], "label_smoothing", "out_dir")
    a, b = (modelfile.load_parameters(d / "checkpoints" / "epoch0001" / "params.h5") for d in (on, off))
    assert any(not np.allclose(a[k], b[k]) for k in a)
    df = predictor.predict(on / "model.nnp", tiny / "valid.csv", backend="nnabla", progress=False)
    assert cross_entropy_of(df) == pytest.approx(s["best"]["validation_error"], rel=1e-4)   # not the training loss
    with pytest.raises(training.TrainingError, match="cannot resume with a different label_smoothing"):
        training.train(tiny, on, TrainConfig(epochs=2, **FAST), resume=True)
