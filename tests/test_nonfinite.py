"""No NaN model (issue 49, root cause 3): settings that cannot estimate BatchNorm statistics are refused
before anything runs, no writer writes a model or checkpoint holding a NaN or an infinity, no reader
uses one, ``predict`` never writes a non-finite probability, and the wing's loops stop at a non-finite
Cost. The command-line cases (exit status, one line, inputs untouched) are in test_hostile.py."""
import dataclasses
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from wbc_nnabla import (checkpoint, classes, engine, fileio, loader, modelfile, models, pipeline,  # noqa: E402
                        predictor, training)
from wbc_nnabla.recipe import TrainConfig, TrainingError  # noqa: E402
from wbc_nnabla.sites import finetune, infomax  # noqa: E402
from wbc_nnabla.sites.settings import FinetuneConfig, InfoMaxConfig  # noqa: E402

SIZE = 32
BAD = "layer4/0/bn1/bn/var"


@pytest.fixture(scope="module")
def params():
    """An untrained ResNet-18's parameters at 32 px (``{name: ndarray}``, BatchNorm statistics included)."""
    scope = OrderedDict()
    nn.seed(0)
    with nn.parameter_scope("", scope):
        models.resnet(nn.Variable((1, 3, SIZE, SIZE)), "resnet18", 6, test=True)
        return {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}


def _meta():
    return modelfile.model_meta("resnet18", classes.CLASSES6, SIZE)


def _with_nan(params, name=BAD):
    """``params`` with one value of ``name`` NaN (as ``train --batch-size 1`` wrote the last stage's variances at 32 px)."""
    value = params[name].copy()
    value.flat[3] = np.nan
    return dict(params, **{name: value})


def _overflowing(params):
    """Finite weights whose logits overflow float32: every probability NaN (a model gone wrong at export)."""
    return dict(params, **{"fc/affine/W": np.full_like(params["fc/affine/W"], 3e38)})


@pytest.mark.parametrize("norm", ["batch", "ibn"])
def test_batch_statistics_over_one_image_are_refused_where_the_settings_are_checked(norm):
    with pytest.raises(TrainingError, match=rf"^batch_size must be >= 2 with norm {norm}, got 1: BatchNorm"):
        TrainConfig(batch_size=1, norm=norm).validate()
    TrainConfig(batch_size=2, norm=norm).validate()
    TrainConfig(batch_size=1, norm="group").validate()      # GroupNorm: each image's own statistics
    with pytest.raises(TrainingError, match="batch_size must be >= 2"):
        pipeline.make_config("demo", batch_size=1)           # reproduce: refused before OUT is made


def test_the_engine_refuses_to_re_estimate_batchnorm_on_batches_of_one(tiny_dataset):
    models.clear_scope(engine.SCOPE)
    graph = engine.build_graph("resnet18", 6, 1, SIZE)
    paths, labels = loader.read_split(tiny_dataset / "train.csv")
    images = loader.ImageLoader(paths, labels, SIZE)
    with pytest.raises(TrainingError, match="batch_size must be >= 2"):
        engine.recalibrate_bn(graph, images, 1, np.arange(4))


def _listing(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_no_model_or_checkpoint_with_a_nan_is_written(params, tmp_path):
    """save_nnp, save_h5 and save_checkpoint name the output and the first bad parameter and write nothing."""
    bad = _with_nan(params)
    for path in (tmp_path / "model.nnp", tmp_path / "model.h5"):
        save = modelfile.save_nnp if path.suffix == ".nnp" else modelfile.save_h5
        with pytest.raises(modelfile.ModelError, match=rf"^{path}: not written: parameter {BAD} holds nan"):
            save(path, bad, _meta()) if path.suffix == ".nnp" else save(path, bad)
    inf = dict(params, **{"fc/affine/b": np.full_like(params["fc/affine/b"], np.inf)})
    with pytest.raises(modelfile.ModelError, match="parameter fc/affine/b holds inf"):
        modelfile.save_nnp(tmp_path / "model.nnp", inf, _meta())
    assert _listing(tmp_path) == []
    models.clear_scope(engine.SCOPE)
    engine.build_graph("resnet18", 6, 2, SIZE)
    variables = engine.set_parameters(bad)
    run = tmp_path / "run"
    with pytest.raises(modelfile.ModelError, match=rf"checkpoints/epoch0001: not written: parameter {BAD}"):
        checkpoint.save_checkpoint(run, 1, variables, engine.make_solver(TrainConfig().solver), {"epoch": 1})
    assert not (run / "checkpoint.json").exists() and not any((run / "checkpoints").glob("epoch*"))
    modelfile.save_h5(tmp_path / "good.h5", params)          # finite: written
    assert _listing(tmp_path) == ["good.h5"]             # not even the run folder was made


def test_a_model_with_a_nan_is_not_read(params, tmp_path):
    """A model another tool (or an older version) wrote with a NaN statistic is refused when read, by name."""
    path = tmp_path / "old.h5"
    nn.save_parameters(str(path), {k: nn.Variable.from_numpy_array(v) for k, v in _with_nan(params).items()},
                       extension=".h5")
    with pytest.raises(modelfile.ModelError, match=rf"^{path}: not usable: parameter {BAD} holds nan"):
        modelfile.read_model(path)
    with pytest.raises(modelfile.ModelError, match=f"{path}: not usable"):
        predictor.predict(path, fileio.demo_data(), size=SIZE, backend="nnabla", progress=False)


@pytest.mark.parametrize("backend", ["nnabla", "opencv"])
def test_predict_never_returns_a_non_finite_probability(params, tmp_path, tiny_dataset, backend):
    path = tmp_path / "overflow.nnp"
    modelfile.save_nnp(path, _overflowing(params), _meta())   # finite weights: written
    with pytest.raises(modelfile.ModelError, match=rf"^{path}: gives non-finite probabilities \(NaN or infinite\) "
                                                   rf"for 6 of 6 cells"):
        predictor.predict(path, tiny_dataset / "valid.csv", backend=backend, progress=False)


def test_the_paper_run_stops_at_a_non_finite_cost_and_leaves_nothing(params, tmp_path, tiny_dataset):
    init = tmp_path / "overflow.nnp"
    modelfile.save_nnp(init, _overflowing(params), _meta())
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"^non-finite Cost \(nan\) at epoch 1, iteration 1: training stopped; "
                                            r"last good checkpoint kept: none"):
        training.train(tiny_dataset, out, TrainConfig(epochs=2, init=str(init), size=SIZE, batch_size=4,
                                                      progress=False, max_iterations=2, train_eval_limit=4))
    assert not out.exists()


def test_finetune_and_infomax_stop_at_a_non_finite_cost_and_write_nothing(params, tmp_path, tiny_dataset):
    model = tmp_path / "overflow.nnp"
    modelfile.save_nnp(model, _overflowing(params), _meta())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(finetune.FinetuneError, match=rf"^{model}: fine-tuning: non-finite Cost \(nan\) at update 1: "
                                                     r"stopped before that update, nothing written"):
        finetune.finetune(model, tiny_dataset / "train.csv", out / "f.nnp", FinetuneConfig(iterations=3, batch_size=4),
                          progress=False)
    cfg = dataclasses.replace(InfoMaxConfig(), iterations=3, batch_size=4)
    with pytest.raises(infomax.AdaptationError, match=rf"^{model}: infomax: non-finite Cost \(nan\) at update 1"):
        infomax.infomax(model, fileio.demo_data(), out / "i.nnp", cfg, progress=False, max_images=32)
    assert _listing(out) == []
