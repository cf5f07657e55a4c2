"""Settings of the training recipe (paper section II.4): AdaBound and ImageAugmentation.

Kept free of nnabla so the command line can show these defaults without
loading nnabla; :mod:`wbc_nnabla.training` uses and re-exports them.
"""
from __future__ import annotations

import dataclasses

#: Clean training images on which BatchNorm's running statistics are re-estimated before
#: every evaluation ("precise BN", :func:`wbc_nnabla.training.recalibrate_bn`); 0 keeps
#: Neural Network Console's behaviour. A deviation from NNC: docs/training.md, "BatchNorm".
BN_RECALIBRATION_IMAGES = 960


@dataclasses.dataclass
class Augmentation:
    """Ranges of NNC's ImageAugmentation (``nnabla.functions.image_augmentation``), per image and iteration.

    Semantics (nnabla ``image_augmentation.cpp``), input RGB in [0, 1]:

    * ``contrast``: factor drawn log-uniformly in ``[1/contrast, contrast]`` and applied
      around ``contrast_center``: ``y = (x + b - center) * c + center``;
    * ``brightness``: additive shift ``b`` uniform in ``[-brightness, brightness]`` (same units as x);
    * ``min_scale``/``max_scale`` (Magnification): zoom factor, log-uniform; >1 zooms in;
    * ``angle``: rotation uniform in ``[-angle, angle]`` **degrees** here (nnabla takes
      radians; converted); pixels from outside the image repeat the border;
    * ``flip_lr``/``flip_ud``: random mirror (cells have no orientation; not in the paper).
    """
    contrast: float = 1.2
    contrast_center: float = 0.5
    brightness: float = 0.1
    min_scale: float = 0.9
    max_scale: float = 1.1
    angle: float = 45.0
    flip_lr: bool = True
    flip_ud: bool = True
    enabled: bool = True


@dataclasses.dataclass
class AdaBoundConfig:
    """Hyper-parameters of ``nnabla.solvers.AdaBound`` plus L2 weight decay (``solver.weight_decay``).

    Defaults are nnabla's (= Luo et al.'s official code and NNC's). ``weight_decay`` adds
    ``weight_decay * w`` to every gradient before the update, as the official
    ``adabound.py`` does.
    """
    alpha: float = 1e-3
    final_lr: float = 0.1
    gamma: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
