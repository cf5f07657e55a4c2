"""Every setting of a ``reproduce`` run, and its presets: ``paper``, ``recommended``, ``demo``.

:class:`Config` declares each setting once (:mod:`wbc_nnabla.settings`): its default, range and
help, which are also the ``reproduce``/``demo`` flags. :func:`make_config` applies a preset, a
JSON config file and explicit overrides, in that order; :func:`train_config` is the
:class:`~wbc_nnabla.recipe.TrainConfig` of Model A or Model B. nnabla-free.

Presets (:data:`PRESETS`): ``paper`` is the paper's recipe (section II: crop 750, train 480 /
infer 320, totals 2,385 / 3,284, AdaBound, 300 + 300 epochs, ImageNet start when the weights file
is present); ``recommended`` infers at the training scale (docs/method.md, "480/320") and adapts
each model to the inference cells (``adapt``: AdaBN and WBC scale) before predicting, for cells
from another lab, with the paper's training recipe (docs/cross_site.md); ``demo`` is scaled down so
``make demo`` finishes in minutes on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Optional

from . import settings
from .errors import InputError
from .recipe import (ARCH_NAMES, BACKEND_NAMES, BATCH_SIZE, BN_RECALIBRATION_IMAGES, CONTEXT_NAMES, MAX_INPUT_SIZE,
                     MIN_TRAIN_SIZE, PAPER, PRECISION_NAMES, RECIPE_NAMES, TrainConfig, recipe_config)
from .settings import SEED, at_least, between, setting

_SIZE = between(MIN_TRAIN_SIZE, MAX_INPUT_SIZE, "pixels")
_IMAGES = at_least(1, "image")
_OPTIONAL = at_least(1, "(or None)", optional=True)


@dataclasses.dataclass
class Config:
    """Every setting of a reproduction run (units: pixels, epochs, images).

    Each field but ``preset`` is also a ``reproduce``/``demo`` flag (:func:`wbc_nnabla.settings.setting`:
    its help text is the field's documentation).
    """

    preset: str = setting("paper", flag=False)
    crop: int = setting(PAPER.crop, f"crop side in pixels around each cell (paper: {PAPER.crop})",
                        rule=at_least(1, "pixel"))
    train_size: int = setting(PAPER.train_size, f"training input side in pixels (paper: {PAPER.train_size})",
                              rule=_SIZE)
    infer_size: int = setting(PAPER.infer_size, f"inference input side in pixels (paper: {PAPER.infer_size})",
                              rule=_SIZE)
    total_a: int = setting(PAPER.total_a, f"images in dataset ① after balancing (paper: {PAPER.total_a})",
                           rule=_IMAGES)
    total_b: int = setting(PAPER.total_b, f"images in dataset ② after balancing (paper: {PAPER.total_b})",
                           rule=_IMAGES)
    epochs_a: int = setting(PAPER.epochs, f"epochs of Model A (paper: {PAPER.epochs})", rule=at_least(1))
    epochs_b: int = setting(PAPER.epochs, f"epochs of Model B (paper: {PAPER.epochs})", rule=at_least(1))
    batch_size: int = setting(BATCH_SIZE, "images per iteration", rule=_IMAGES)
    train_eval_limit: Optional[int] = setting(
        None, "Training Error over a seeded class-stratified sample of N training images (default: all, as NNC)")
    bn_recalibration: int = setting(
        BN_RECALIBRATION_IMAGES, metavar="N",
        help=f"re-estimate BatchNorm statistics on N clean training images (default {BN_RECALIBRATION_IMAGES}; "
             f"0: as NNC)")
    arch: str = setting(PAPER.arch, f"network (paper: {PAPER.arch})", choices=ARCH_NAMES)
    pretrained: str = setting("auto", "auto (ImageNet when the weights file is present), imagenet, none or a file")
    valid_fraction: float = setting(0.2, "validation share of the teacher cells",
                                    rule=between(0, 1, "training needs validation images", lo_open=True,
                                                 hi_open=True))
    inference_fraction: float = setting(0.2, "share of SOURCE held out as the inference set",
                                        rule=between(0, 1, hi_open=True))
    pseudo_smears: Optional[int] = setting(None, "group held-out cells without smear ids into N smears",
                                           rule=_OPTIONAL)
    cells_per_smear: Optional[int] = setting(None, "cells per pseudo-smear", rule=_OPTIONAL)
    dedupe: bool = setting(False, "drop cells that SOURCE (or --inference) lists twice with the same label and "
                                  "smear, and report how many (default: a repeated cell is an error)")
    skip_bad: bool = setting(False, "skip unreadable images (listed in each dataset's build_report.md) "
                                    "instead of stopping")
    seed: int = setting(0, "seed of every random choice", rule=SEED)
    backend: str = setting("auto", "inference backend", choices=BACKEND_NAMES)
    # fp32 by default, unlike `predict`'s measured auto: the study is reproduced with the paper's arithmetic
    precision: str = setting("fp32", "arithmetic of the predictions: fp32 (the paper's), int8 or auto "
                                     "(`predict --precision`, docs/inference.md)", choices=PRECISION_NAMES,
                             flag=False)
    context: str = setting("cpu", "nnabla context for training", choices=CONTEXT_NAMES)
    pending_threshold: Optional[float] = setting(
        None, "judgement-pending cut-off on the top probability",
        rule=settings.Rule(lambda v: v is None or (settings.finite(v) and 0 <= v <= 1), "in [0, 1] (or None)"))
    target_accuracy: float = setting(0.99, "accuracy the pending cut-off is calibrated to",
                                     rule=between(0, 1, lo_open=True))
    gradcam_examples: int = setting(8, "disagreeing cells shown with Grad-CAM", rule=at_least(0, "cells"))
    recipe: str = setting("paper", "training recipe of both models: paper, or robust (colour terms and a wide "
                                   "Magnification; docs/cross_site.md)", choices=RECIPE_NAMES)
    adapt: bool = setting(False, "adapt each model to the inference cells before predicting (AdaBN and WBC "
                                 "scale, `wbc-nnabla adapt`; labels unused)")
    tta: bool = setting(False, "test-time augmentation: average each cell's 8 turned and mirrored views "
                               "(`predict --tta`; 8x the inference time)")


PRESETS: Dict[str, dict] = {
    "paper": {},
    "recommended": dict(infer_size=PAPER.train_size, adapt=True),
    "demo": dict(crop=360, train_size=40, infer_size=40, total_a=480, total_b=480, epochs_a=5, epochs_b=3,
                 batch_size=16, train_eval_limit=96, bn_recalibration=192, pretrained="none",
                 inference_fraction=1 / 3, pseudo_smears=5, cells_per_smear=24, gradcam_examples=6),
}


def make_config(preset: str = "paper", config_file: Optional[str] = None, **overrides) -> Config:
    """The effective configuration: preset, then a JSON config file, then explicit overrides (not None)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = settings.from_dict(Config, dict(PRESETS[preset], preset=preset), f"preset {preset}")
    if config_file:
        cfg = settings.from_dict(Config, settings.read_json(config_file), str(config_file), base=cfg)
    cfg = settings.from_dict(Config, {k: v for k, v in overrides.items() if v is not None}, "settings", base=cfg)
    check_config(cfg)
    return cfg


def check_config(cfg: Config) -> None:
    """Raise a :class:`~wbc_nnabla.errors.WBCError` naming the first setting of ``cfg`` out of its range.

    Run before ``reproduce`` writes anything: the settings of both training runs
    (:meth:`~wbc_nnabla.recipe.TrainConfig.validate` of :func:`train_config`) and those of the
    other stages, which would otherwise fail only when their stage is reached, hours in.
    """
    settings.check(cfg, InputError)
    for epochs in (cfg.epochs_a, cfg.epochs_b):
        train_config(cfg, epochs).validate()


def train_config(cfg: Config, epochs: int, pretrained: str = "none", init: Optional[Path] = None,
                 progress: bool = True) -> TrainConfig:
    """The :class:`~wbc_nnabla.recipe.TrainConfig` of one model of a run: Model A and Model B differ in
    ``epochs``, ``pretrained`` and ``init`` (Model A's ``model.nnp``) only. The run's models record
    what the wing reads (``site_record``): the report's domain-shift check and ``adapt`` use it."""
    return dataclasses.replace(
        recipe_config(cfg.recipe), epochs=epochs, batch_size=cfg.batch_size, size=cfg.train_size, seed=cfg.seed,
        pretrained=pretrained, init=init, arch=cfg.arch, context=cfg.context, train_eval_limit=cfg.train_eval_limit,
        progress=progress, bn_recalibration=cfg.bn_recalibration, site_record=True)
