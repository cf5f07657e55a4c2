"""Settings out of range are refused by name before anything is read or written.

Seeds: one range for every command and function that takes one (``sampling.check_seed``):
NumPy's ``default_rng`` refuses negative seeds, its legacy ``RandomState`` seeds above
2**32 - 1, and nnabla's random functions take a C ``int``; a seed outside [0, 2**31 - 1] was a
traceback deep inside a run. Training settings: a Magnification of 0 crashed nnabla
(segmentation fault), a negative colour range was a traceback, and a negative step size, a
beta of 1 or a negative hue trained without a word (:meth:`Augmentation.validate`,
:meth:`AdaBoundConfig.validate`).
"""
import math

import numpy as np
import pytest

from wbc_nnabla import fileio, pipeline, recipe, sampling
from wbc_nnabla.errors import InputError, WBCError
from wbc_nnabla.recipe import AdaBoundConfig, Augmentation, TrainConfig, TrainingError

BAD = [-1, sampling.MAX_SEED + 1, 1.5, "3", True, None]


def test_check_seed_takes_the_range_every_consumer_takes():
    assert sampling.MAX_SEED == 2 ** 31 - 1
    for good in (0, 7, sampling.MAX_SEED, np.int64(5), np.uint32(9)):
        assert sampling.check_seed(good) == int(good) and type(sampling.check_seed(good)) is int
        np.random.RandomState(sampling.check_seed(good))          # both NumPy generators take it
        np.random.default_rng(sampling.check_seed(good))
    for bad in BAD:
        with pytest.raises(InputError, match=r"--seed must be an integer in \[0, 2147483647\], got"):
            sampling.check_seed(bad, "--seed")


@pytest.mark.parametrize("bad", [-1, sampling.MAX_SEED + 1])
def test_training_config_refuses_a_bad_seed(bad):
    with pytest.raises(TrainingError, match="seed must be an integer"):
        TrainConfig(seed=bad).validate()
    TrainConfig(seed=sampling.MAX_SEED).validate()


def _nothing_written(tmp_path, call):
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(WBCError, match="seed must be an integer"):
        call()
    assert sorted(tmp_path.rglob("*")) == before


def test_library_functions_refuse_a_bad_seed_before_writing(tmp_path):
    pytest.importorskip("nnabla")                   # the model stages import it
    from wbc_nnabla import datasets
    from wbc_nnabla.sites import adaptation, infomax, reference as domain_model, finetune, selftraining
    from wbc_nnabla.sites.settings import FinetuneConfig, InfoMaxConfig, SelfTrainConfig
    cells = sampling.__file__                       # never read: the seed is checked first
    model = tmp_path / "model.nnp"
    _nothing_written(tmp_path, lambda: datasets.build_dataset(fileio.demo_data(), tmp_path / "ds", background="keep",
                                                              size=32, seed=-1, progress=False))
    _nothing_written(tmp_path, lambda: adaptation.adapt_batchnorm(model, cells, tmp_path / "a.nnp", seed=-1))
    _nothing_written(tmp_path, lambda: infomax.infomax(model, cells, tmp_path / "i.nnp",
                                                          config=InfoMaxConfig(seed=-1)))
    _nothing_written(tmp_path, lambda: finetune.finetune(model, cells, tmp_path / "f.nnp",
                                                         config=FinetuneConfig(seed=-1)))
    _nothing_written(tmp_path, lambda: selftraining.self_train(model, cells, tmp_path / "s.nnp",
                                                               config=SelfTrainConfig(seed=2 ** 31)))
    _nothing_written(tmp_path, lambda: domain_model.add_domain_reference(model, tmp_path, tmp_path / "d.nnp",
                                                                         seed=-1))
    _nothing_written(tmp_path, lambda: pipeline.reproduce(fileio.demo_data(), tmp_path / "rep", preset="demo",
                                                          progress=False, seed=-1))



#: (field, a value outside its range) for each range :meth:`Augmentation.validate` checks.
BAD_AUGMENTATION = [("contrast", 0.0), ("contrast", 0.5), ("contrast_center", 1.5), ("brightness", -0.1),
                    ("min_scale", 0.0), ("min_scale", -1.0), ("max_scale", 0.5), ("angle", 181.0), ("angle", -1.0),
                    ("od_scale", -0.1), ("od_scale", 1.5), ("od_shift", -0.1), ("saturation", 1.5),
                    ("log_gamma", -0.1), ("hue", -1.0), ("hue", 200.0), ("color_prob", 2.0), ("blur", -1.0),
                    ("randconv", 1.5), ("mixstyle", -0.5), ("fourier", 2.0), ("hue", math.nan),
                    ("od_shift", math.inf)]
BAD_SOLVER = [("alpha", 0.0), ("alpha", -1e-3), ("final_lr", math.inf), ("gamma", 0.0), ("eps", 0.0),
              ("beta1", 1.0), ("beta2", -0.1), ("weight_decay", -1.0), ("alpha", math.nan)]
BAD_TRAIN = [("size", 4096), ("export_size", 0), ("export_size", 16), ("train_eval_limit", 0),
             ("bn_recalibration", -1), ("tile_every", -1), ("max_iterations", 0)]


def test_every_recipe_and_preset_is_in_range():
    for name in recipe.RECIPE_NAMES:
        recipe.recipe_augmentation(name).validate()
    AdaBoundConfig().validate()
    TrainConfig(size=recipe.MAX_INPUT_SIZE, export_size=32).validate()


@pytest.mark.parametrize("field,value", BAD_AUGMENTATION, ids=[f"{f}={v}" for f, v in BAD_AUGMENTATION])
def test_augmentation_out_of_range_is_refused_by_name(field, value):
    with pytest.raises(TrainingError, match=rf"^{field} must be .*, got {value}$"):
        TrainConfig(augmentation=Augmentation(**{field: value})).validate()


@pytest.mark.parametrize("field,value", BAD_SOLVER, ids=[f"{f}={v}" for f, v in BAD_SOLVER])
def test_adabound_out_of_range_is_refused_by_name(field, value):
    with pytest.raises(TrainingError, match=rf"^{field} must be .*, got {value}$"):
        TrainConfig(solver=AdaBoundConfig(**{field: value})).validate()


@pytest.mark.parametrize("field,value", BAD_TRAIN, ids=[f"{f}={v}" for f, v in BAD_TRAIN])
def test_training_setting_out_of_range_is_refused_by_name(field, value):
    with pytest.raises(TrainingError, match=rf"^{field} must be .*, got {value}$"):
        TrainConfig(**{field: value}).validate()


def test_site_steps_and_sizes_are_refused_before_reading(tmp_path):
    pytest.importorskip("nnabla")
    from wbc_nnabla import modelfile, predictor
    from wbc_nnabla.sites import finetune, infomax, selftraining
    from wbc_nnabla.sites.settings import FinetuneConfig, InfoMaxConfig, SelfTrainConfig
    model, cells = tmp_path / "model.nnp", tmp_path / "cells"          # neither exists: never read
    for call in (lambda: finetune.finetune(model, cells, tmp_path / "f.nnp", config=FinetuneConfig(alpha=-1e-4)),
                 lambda: infomax.infomax(model, cells, tmp_path / "i.nnp", config=InfoMaxConfig(final_lr=0.0)),
                 lambda: selftraining.self_train(model, cells, tmp_path / "s.nnp",
                                                 config=SelfTrainConfig(alpha=math.nan))):
        with pytest.raises(WBCError, match=r"^(alpha|final_lr) must be a finite number > 0"):
            call()
    for size in (0, 31, recipe.MAX_INPUT_SIZE + 1):
        with pytest.raises(InputError, match=f"size {size}: "):
            modelfile.network_size({"input_size": 64}, size, model)
    assert modelfile.network_size({"input_size": 64}, None, model) == 64
    for threads in (0, -1, predictor.MAX_THREADS + 1):
        with pytest.raises(InputError, match=rf"threads must be in \[1, {predictor.MAX_THREADS}\]"):
            predictor.load_backend(model, threads=threads)
    assert list(tmp_path.iterdir()) == []


#: reproduce settings that used to fail only when their stage was reached (after Model A had trained,
#: for epochs_b or gradcam_examples), each with the name the refusal gives.
BAD_REPRODUCE = [(dict(epochs_b=0), "epochs_b"), (dict(infer_size=0), "infer_size"),
                 (dict(gradcam_examples=-1), "gradcam_examples"), (dict(inference_fraction=2.0), "inference_fraction"),
                 (dict(train_eval_limit=0), "train_eval_limit"), (dict(bn_recalibration=-1), "bn_recalibration"),
                 (dict(target_accuracy=0.0), "target_accuracy"), (dict(backend="gpu"), "backend"),
                 (dict(valid_fraction=0.0), "valid_fraction")]


def test_every_reproduce_preset_is_in_range():
    for preset in pipeline.PRESETS:
        pipeline.check_config(pipeline.make_config(preset))


@pytest.mark.parametrize("bad,name", BAD_REPRODUCE, ids=[n for _, n in BAD_REPRODUCE])
def test_reproduce_refuses_a_setting_out_of_range_before_writing(tmp_path, bad, name):
    with pytest.raises(WBCError, match=rf"^{name} "):
        pipeline.reproduce(fileio.demo_data(), tmp_path / "rep", preset="demo", progress=False, **bad)
    assert list(tmp_path.iterdir()) == []


#: A ``--config`` JSON with a wrong type (a string, null, true or a fraction for an epoch count) was
#: a TypeError traceback, or ran for minutes before failing; each value is named with the file.
BAD_CONFIG_FILES = [('{"epochs_a": "ten"}', "epochs_a must be an integer, got 'ten'"),
                    ('{"crop": null}', "crop must be an integer, got None"),
                    ('{"pseudo_smears": 2.5}', "pseudo_smears must be an integer or null, got 2.5"),
                    ('{"epochs_b": true}', "epochs_b must be an integer, got True"),
                    ('{"valid_fraction": "0.2"}', "valid_fraction must be a number, got '0.2'"),
                    ('{"adapt": "yes"}', "adapt must be true or false, got 'yes'"),
                    ('[1, 2]', "expected a JSON object of settings")]


@pytest.mark.parametrize("text,message", BAD_CONFIG_FILES, ids=[t for t, _ in BAD_CONFIG_FILES])
def test_reproduce_config_file_of_the_wrong_type_is_refused_by_name(tmp_path, text, message):
    cfg = tmp_path / "c.json"
    cfg.write_text(text)
    with pytest.raises(WBCError) as e:
        pipeline.reproduce(fileio.demo_data(), tmp_path / "rep", preset="demo", config_file=str(cfg), progress=False)
    assert str(e.value).startswith(f"{cfg}: {message}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json"]
    good = dict(epochs_a=2, valid_fraction=0.25, pseudo_smears=None, adapt=True)     # int for a float field too
    assert pipeline.make_config("demo", **good).valid_fraction == 0.25
