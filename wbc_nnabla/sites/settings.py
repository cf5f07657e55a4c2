"""Settings of the cross-lab wing, declared once each (:mod:`wbc_nnabla.settings`); nnabla-free.

What carries a model to another lab's cells is not in Sasaki et al. (2020), whose model is used
in the lab that trained it: every constant here was chosen before any foreign-site result
(docs/research/cross_site_log.md, "How each constant was chosen").
"""
from __future__ import annotations

import dataclasses
import math
from typing import List, Optional

from ..recipe import BN_RECALIBRATION_IMAGES
from ..settings import SEED, at_least, between, positive, setting

#: Colour standardisations ``predict --stain`` offers (:mod:`wbc_nnabla.sites.stain`).
STAIN_METHODS = ("none", "white-balance", "reinhard", "macenko")

#: Fewest readable site cells unlabelled site adaptation (AdaBN, :mod:`wbc_nnabla.sites.adaptation`)
#: accepts: two batches of 16. The new statistics are the mean of per-batch statistics; with a
#: handful of cells they reflect which cells happened to be drawn (noise), yet would replace
#: the training site's estimates made from hundreds of images.
MIN_ADAPT_IMAGES = 32
#: Site cells below which ``adapt`` says that more would be safer: on average 32 cells gave within
#: 0.02 of all of a site's cells, but one draw of 32 up to 0.06 less, of 128 at most 0.033 less
#: (docs/research/cross_site_log.md, "How many cells `adapt` needs").
ADVISED_ADAPT_IMAGES = 128
#: Site cells AdaBN draws by default (60 batches of 16, as many as precise BN uses in training).
MAX_ADAPT_IMAGES = BN_RECALIBRATION_IMAGES
#: Cells per batch statistic of AdaBN (``adapt``'s default, and the re-estimation that ends ``infomax``).
ADABN_BATCH = 16
#: How ``adapt``'s re-framing (:func:`wbc_nnabla.sites.framing.reframe`) fills the band it adds around a
#: crop it zooms out: the crop mirrored (``reflect``, what ``build-dataset`` does where a crop
#: leaves its field), its edge pixels repeated (``replicate``, what nnabla's ImageAugmentation fills
#: with when the training graph's Magnification zooms out) or its own slide-background colour
#: (``background``).
PADS = ("reflect", "replicate", "background")
#: The padding of a model adapted before ``adapt --pad`` existed (its metadata has no ``pad``).
LEGACY_PAD = "reflect"
#: The padding ``adapt`` stores when it measures a site's scale.
DEFAULT_PAD = "background"

_SIZE = "input side in pixels (default: the model's size)"


@dataclasses.dataclass
class FinetuneConfig:
    """Settings of :func:`wbc_nnabla.sites.finetune.finetune` (units: iterations, images, pixels).

    Chosen before any foreign-site result: 100 iterations of 8 cells show each of 100 cells 8
    times; AdaBound's step 1e-4 is a tenth of the training default (the usual fine-tuning rule),
    ``final_lr`` likewise.
    """
    iterations: int = setting(100, "AdaBound updates", rule=at_least(1))
    batch_size: int = setting(8, "labelled cells per update", rule=at_least(1))
    alpha: float = setting(1e-4, "AdaBound step size (Adam learning rate)", rule=positive())
    final_lr: float = setting(0.01, "AdaBound final (SGD) learning rate", rule=positive())
    seed: int = setting(0, "seed of shuffles and augmentation", rule=SEED)
    size: Optional[int] = setting(None, _SIZE, rule=at_least(16, "pixels (or None)", optional=True))


#: ``finetune --select``: the (AdaBound step, final_lr) pairs and update counts compared by
#: cross-validation inside the lab's labelled cells, and the number of folds. Fixed before any
#: run: the fine-tuning default (1e-4) and the training default (1e-3), each with final_lr at 100
#: times the step as in :class:`FinetuneConfig`, at 100 and 200 updates.
SELECT_STEPS = ((1e-4, 0.01), (1e-3, 0.1))
SELECT_ITERATIONS = (100, 200)
SELECT_FOLDS = 3


def select_candidates(base: FinetuneConfig) -> List[FinetuneConfig]:
    """``base`` with each of :data:`SELECT_STEPS` x :data:`SELECT_ITERATIONS` (batch, seed and size kept)."""
    return [dataclasses.replace(base, alpha=a, final_lr=f, iterations=i)
            for a, f in SELECT_STEPS for i in SELECT_ITERATIONS]


@dataclasses.dataclass
class SelfTrainConfig(FinetuneConfig):
    """Settings of :func:`wbc_nnabla.sites.selftraining.self_train`: :class:`FinetuneConfig` per round, plus
    the rounds.

    Class-balanced self-training (Zou et al., ECCV 2018, "CBST"): each round keeps, per
    predicted class, the ``portion`` most confident of the cells the model gives that class,
    and that portion grows by ``portion_step`` each round. CBST's schedule: from 20 % up to 50 %.
    """
    rounds: int = setting(3, "rounds of pseudo-labelling and fine-tuning", rule=at_least(1))
    portion: float = setting(0.2, "first round: share of each predicted class kept (most confident first)",
                             rule=between(0, 1, "a share", lo_open=True))
    portion_step: float = setting(0.15, "added to the share each round (capped at 1)",
                                  rule=between(0, math.inf, "a share"))


@dataclasses.dataclass
class InfoMaxConfig:
    """Settings of :func:`wbc_nnabla.sites.infomax.infomax` (units: updates, cells, pixels).

    Chosen before any foreign-site result: the step of :class:`FinetuneConfig`; SHOT's weight 1 of
    the prior term (Liang et al., ICML 2020); a batch of 32 cells, over which the mean prediction
    is compared with the prior.
    """
    iterations: int = setting(100, "AdaBound updates", rule=at_least(1))
    batch_size: int = setting(32, "site cells per update (the mean prediction is taken over the batch)",
                              rule=at_least(2, "(a mean prediction)"))
    alpha: float = setting(1e-4, "AdaBound step size (Adam learning rate)", rule=positive())
    final_lr: float = setting(0.01, "AdaBound final (SGD) learning rate", rule=positive())
    weight: float = setting(1.0, "weight of the prior term KL(mean prediction || prior) against the entropy",
                            rule=between(0, math.inf))
    prior: str = setting("normal", "what the batch's mean prediction is drawn to: normal (a healthy adult's "
                                   "differential), none (equal classes: SHOT's diversity term) or Class=share,...",
                         metavar="PRIOR")
    seed: int = setting(0, "seed of the cell sample, shuffles and augmentation", rule=SEED)
    size: Optional[int] = setting(None, _SIZE, rule=at_least(16, "pixels (or None)", optional=True))
