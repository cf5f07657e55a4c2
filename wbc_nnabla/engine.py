"""The training engine: the graph, the solver, one ``fit`` loop, evaluation and BatchNorm re-estimation.

Every stage that trains or re-estimates a network runs here: the paper's run
(:mod:`wbc_nnabla.training`: Model A, Model B), and the wing's fine-tuning, information
maximisation and self-training (:mod:`wbc_nnabla.sites`), each a loss plus :func:`fit`.

* :func:`build_graph`: a ResNet (:mod:`wbc_nnabla.models`, Fig. 4) on the parameters of one
  scope, with the training graph's augmentation (:mod:`wbc_nnabla.augmentation`) or in test mode;
* :func:`make_solver`: nnabla's AdaBound (section II.4) over the trainable parameters;
* :func:`fit`: forward, backward and update over a stream of batches (:mod:`wbc_nnabla.loader`);
* :func:`evaluate`: NNC's "Error" (mean cross-entropy) and misclassification of a split;
* :func:`recalibrate_bn`: BatchNorm running statistics re-estimated on clean images ("precise BN",
  and AdaBN on another lab's cells).
"""
from __future__ import annotations

import collections
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.solvers as S
import numpy as np
from nnabla.ext_utils import get_extension_context
from scipy.special import softmax
from tqdm import tqdm

from . import models, outputs
from .augmentation import augment, mixstyle_hook, mixup as mix_batch
from .loader import ImageLoader, Subset, batches
from .recipe import CONTEXT_NAMES, AdaBoundConfig, Augmentation, TrainingError, check_bn_batch

#: Parameter scope of the training graphs (kept apart from a user's own parameters).
SCOPE = "wbc_train"


Graph = collections.namedtuple("Graph", "x t x_aug logits losses loss")
Graph.__doc__ = """One network on the parameters of scope :data:`SCOPE` (:func:`build_graph`).

x: input ``(B, 3, S, S)`` RGB in [0, 1].
t: labels ``(B, 1)`` int.
x_aug: the network's input after augmentation and mixup (``x`` without).
logits: ``(B, C)``.
losses: per-sample softmax cross-entropy ``(B, 1)`` (with ``label_smoothing``, the smoothed one; with
    ``mixup``, the mix of the two images' losses).
loss: their mean ``()``.
"""


def build_graph(arch: str, num_classes: int, batch_size: int, size: int, test: bool = False,
                aug: Optional[Augmentation] = None, aug_seed: int = -1, weight_init: str = "glorot",
                norm: str = "batch", styles: Optional[np.ndarray] = None, label_smoothing: float = 0.0,
                mixup: float = 0.0) -> Graph:
    """A ResNet graph sharing the parameters of :data:`SCOPE`, built for one use.

    * training: ``aug`` given (ImageAugmentation seeded with ``aug_seed``; MixStyle when
      ``aug.mixstyle``; the Fourier step with the style bank ``styles``, :func:`style_bank`,
      when ``aug.fourier``), batch-statistics BN;
    * test (validation, Training Error): ``test=True``, running-statistics BN, no ``aug``
      (``finetune`` gives ``aug`` with ``test=True``: augmented, BatchNorm frozen);
    * clean batch statistics (precise BN, :func:`recalibrate_bn`): neither.

    The first graph built after the scope is cleared creates the parameters, new
    convolution weights drawn by ``weight_init`` (:func:`wbc_nnabla.models.conv_initializer`).
    ``norm``: ``batch``, ``group`` (GroupNorm: per-image statistics whatever ``test``) or ``ibn``
    (IBN-a, :func:`wbc_nnabla.models.ibn_channels`).
    ``label_smoothing``: the loss of :func:`smoothed_cross_entropy` (training graphs only).
    ``mixup``: Beta's ``alpha`` of :func:`wbc_nnabla.augmentation.mixup`, which mixes each augmented
    image with another of its batch; the loss is mixed with the same weights (training graphs only).
    """
    with nn.parameter_scope(SCOPE):
        x = nn.Variable(models.input_shape(batch_size, size))
        t = nn.Variable((batch_size, 1))
        h = augment(x, aug, aug_seed, styles) if aug is not None and aug.enabled else x
        lam = None
        if mixup and aug is not None and not test:
            h, lam = mix_batch(h, mixup, aug_seed)
        h.persistent = True             # kept for the augmentation monitor
        logits = models.resnet(h, arch, num_classes, test=test, weight_init=weight_init, norm=norm,
                               after_stage=None if test else mixstyle_hook(aug, aug_seed))
        logits.persistent = True        # read after forward(clear_buffer=True) of the losses
        losses = smoothed_cross_entropy(logits, t, label_smoothing)
        if lam is not None:
            losses = lam * losses + (1.0 - lam) * smoothed_cross_entropy(logits, F.flip(t, axes=(0,)),
                                                                         label_smoothing)
        return Graph(x, t, h, logits, losses, F.mean(losses))


def smoothed_cross_entropy(logits: nn.Variable, t: nn.Variable, eps: float) -> nn.Variable:
    """Per-image loss ``(B, 1)`` of logits ``(B, C)`` for labels ``t`` ``(B, 1)`` with label smoothing ``eps``.

    ``(1 - eps) * CE(t) + eps * mean_c(-log softmax_c)``: the cross-entropy against a target of
    ``1 - eps + eps / C`` on the label and ``eps / C`` elsewhere (Szegedy et al. 2016, section 7).
    ``eps`` 0 is ``F.softmax_cross_entropy`` itself. nnabla has no smoothed variant of it.
    """
    ce = F.softmax_cross_entropy(logits, t)
    if not eps:
        return ce
    uniform = -F.mean(F.log_softmax(logits, axis=1), axis=1, keepdims=True)
    return (1.0 - eps) * ce + eps * uniform


def parameters(grad_only: bool = False) -> Dict[str, nn.Variable]:
    """The training parameters ``{name: nn.Variable}`` (names as in :mod:`models`)."""
    with nn.parameter_scope(SCOPE):
        return dict(nn.get_parameters(grad_only=grad_only))


def is_fixed(name: str) -> bool:
    """Whether parameter ``name`` is never trained by a loss: BatchNorm's running statistics
    (``.../mean``, ``.../var``) and the ImageNet normalisation constants (``preprocess/``)."""
    return name.endswith("/mean") or name.endswith("/var") or name.startswith("preprocess/")


def set_parameters(values: Dict[str, np.ndarray], trainable: Callable[[str], bool] = lambda name: True
                   ) -> Dict[str, nn.Variable]:
    """The parameters of :data:`SCOPE` in the current parameter dict, each set to ``values[name]`` and
    trained only where ``trainable(name)`` (``need_grad``). Build the graph first."""
    variables = parameters()
    for k, v in variables.items():
        v.d = values[k]
        v.need_grad = trainable(k)
    return variables


def make_solver(cfg: AdaBoundConfig):
    """``nnabla.solvers.AdaBound`` over the trainable parameters of :data:`SCOPE`."""
    solver = S.AdaBound(alpha=cfg.alpha, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                        final_lr=cfg.final_lr, gamma=cfg.gamma)
    solver.set_parameters(parameters(grad_only=True))
    return solver


def get_context(name: str = "cpu"):
    """nnabla extension context for ``cpu`` or ``cudnn``; a clear error when the CUDA extension is missing."""
    if name not in CONTEXT_NAMES + ("cuda",):
        raise TrainingError(f"--context {name!r}: expected cpu or cudnn")
    if name != "cpu":
        try:
            import nnabla_ext.cuda  # noqa: F401  (optional package: probed, not required)
        except ImportError:
            raise TrainingError(f"--context {name} needs the nnabla CUDA extension (nnabla-ext-cuda), "
                                f"which is not installed: pip install -e '.[cuda120]' (CUDA 12; "
                                f"'.[cuda116]' for CUDA 11.6), or use --context cpu") from None
    return get_extension_context(name)


# ----------------------------------------------------------------------------- BatchNorm, evaluation


def recalibrate_bn(graph: Graph, loader: ImageLoader, batch_size: int, rows: Sequence[int]) -> int:
    """Re-estimate every BatchNorm's running mean/var on clean training images ("precise BN").

    graph: a clean batch-statistics graph (:func:`build_graph` without ``test``
        or ``aug``) of batch ``batch_size``.
    rows: the training images used (:func:`sample_rows`: a seeded class-stratified sample,
        never "the first N" of a CSV that may be sorted by class).

    The running statistics accumulated during training come from augmented batches
    and lag the weights; the validation graph and the exported model use them
    (benchmarks/bn_diagnosis.py: this costs about 0.06 of 6-class accuracy at 64 px).
    Here the training images ``rows`` go through the graph, and each layer's running
    statistics are set to the mean of the per-batch statistics.
    Returns the number of batches used. A ``batch_size`` under :data:`~wbc_nnabla.recipe.MIN_BN_BATCH`
    is a :class:`~wbc_nnabla.recipe.TrainingError` (:func:`~wbc_nnabla.recipe.check_bn_batch`).
    """
    stats = {k: v for k, v in parameters().items() if k.endswith("/mean") or k.endswith("/var")}
    if stats:
        check_bn_batch(batch_size)
    # nnabla's BatchNormalization only exposes its statistics through the moving
    # average r_t = d r_{t-1} + (1 - d) b_t (d = models.BN_DECAY); each batch's b_t
    # is recovered from two successive r, then averaged with equal weights.
    decay = models.BN_DECAY
    sums = {k: np.zeros(v.shape, np.float64) for k, v in stats.items()}
    sub = Subset(loader, rows)
    n_batches = max(1, len(sub) // batch_size)
    for xb, _, _ in batches(sub, batch_size, n_batches, False, 0):
        before = {k: v.d.copy() for k, v in stats.items()}
        graph.x.d = xb
        graph.logits.forward(clear_buffer=True)
        for k, v in stats.items():
            sums[k] += (v.d - decay * before[k]) / (1.0 - decay)
    for k, v in stats.items():
        # float32 like every parameter: a float64 array would change the stored dtype
        v.d = (sums[k] / n_batches).astype(np.float32)
    return n_batches


def evaluate(graph: Graph, loader: ImageLoader, batch_size: int, rows: Optional[Sequence[int]] = None
             ) -> Tuple[float, float, np.ndarray]:
    """(mean loss, misclassification rate, probabilities ``(n, C)``) of a test-mode graph.

    graph: :func:`build_graph` with ``test=True`` and batch ``batch_size``.
    rows: evaluate only those items (e.g. :func:`sample_rows`), in that order.

    This is NNC's "Error" of a dataset: the validation network's cost over it.
    """
    sub = loader if rows is None else Subset(loader, rows)
    n = len(sub)
    losses, probs = [], []
    for xb, yb, k in batches(sub, batch_size, -(-n // batch_size), shuffle=False, seed=0):
        graph.x.d, graph.t.d = xb, yb
        graph.losses.forward(clear_buffer=True)
        losses.append(graph.losses.d[:k, 0].copy())
        probs.append(softmax(graph.logits.d[:k], axis=1))
    p = np.concatenate(probs)
    y = np.asarray(sub.labels)
    return float(np.concatenate(losses).mean()), float((p.argmax(1) != y).mean()), p


def forward_logits(graph: Graph, loader: ImageLoader, rows: Optional[Sequence[int]] = None) -> np.ndarray:
    """Logits ``(n, C)`` of a test-mode ``graph`` over ``loader``'s items (or ``rows`` of them), in order."""
    sub = loader if rows is None else Subset(loader, rows)
    n, batch = len(sub), graph.x.shape[0]
    out = []
    for xb, _, k in batches(sub, batch, -(-n // batch), shuffle=False, seed=0):
        graph.x.d = xb
        graph.logits.forward(clear_buffer=True)
        out.append(graph.logits.d[:k].copy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------- the loop


def stop_nonfinite(what: str, error=TrainingError) -> Callable[[int, float], Exception]:
    """A ``nonfinite`` callback of :func:`fit`: ``error`` naming ``what`` (e.g. ``"MODEL: fine-tuning"``), the
    update and the Cost, saying that the run stopped before that update and that nothing was written."""
    def stop(i: int, cost: float) -> Exception:
        return error(f"{what}: non-finite Cost ({cost}) at update {i + 1}: stopped before that update, nothing "
                     f"written (lower the step: alpha, final_lr; or check the model and the cells)")
    return stop


FitResult = collections.namedtuple("FitResult", "costs compute")
FitResult.__doc__ = """What :func:`fit` returns: ``costs`` (the loss before each update, a list of floats) and
``compute`` (seconds inside nnabla: forward, backward and update)."""


def fit(loss: nn.Variable, solver, stream: Iterable, feed: Callable, total: int, desc: str = "fit",
        progress: bool = True, step_size: Optional[Callable[[int], float]] = None, weight_decay: float = 0.0,
        after: Sequence[Callable] = (), nonfinite: Optional[Callable[[int, float], Exception]] = None,
        bar=None) -> FitResult:
    """One optimisation loop: per batch of ``stream``, forward, backward and ``solver.update()``.

    loss: the scalar to lower (built on the graph ``feed`` fills).
    stream: batches ``(x, y, n_valid)`` (:func:`wbc_nnabla.loader.batches`); feed(x, y) sets the inputs.
    step_size: ``i -> alpha`` set before update ``i`` (a schedule; None: the solver's own).
    weight_decay: L2 added to every gradient before the update (AdaBound's official code).
    after: callables ``(i, cost)`` run after update ``i`` (a weight mean, a monitor, a held-out score).
    nonfinite: ``(i, cost) -> exception`` raised before the update when the loss is NaN or infinite
        (the parameters stay as they were); None: no check.
    bar: a tqdm bar to advance (else one is made with ``desc``, shown only at a terminal).
    """
    costs, compute = [], 0.0
    own = bar is None
    bar = bar if bar is not None else tqdm(total=total, desc=desc, disable=outputs.bar_disabled(progress))
    try:
        for i, (xb, yb, _) in enumerate(stream):
            feed(xb, yb)
            c0 = time.perf_counter()
            loss.forward(clear_no_need_grad=True)
            cost = float(loss.d)
            if nonfinite is not None and not np.isfinite(cost):
                raise nonfinite(i, cost)
            if step_size is not None:
                solver.set_learning_rate(step_size(i))
            solver.zero_grad()
            loss.backward(clear_buffer=True)
            if weight_decay:
                solver.weight_decay(weight_decay)
            solver.update()
            compute += time.perf_counter() - c0
            costs.append(cost)
            for hook in after:
                hook(i, cost)
            bar.set_postfix(cost=f"{cost:.4f}")
            bar.update(1)
    finally:
        if own:
            bar.close()
    return FitResult(costs, compute)


def load_values(params: Dict[str, nn.Variable], values: Dict[str, np.ndarray], what: str,
                strict: bool = True) -> List[str]:
    """Copy arrays into parameters; shape-checked (:class:`~wbc_nnabla.recipe.TrainingError` naming ``what``).

    strict: every parameter must be given and every value must be a parameter. Returns the names loaded.
    """
    missing = [k for k in params if k not in values]
    if strict and missing:
        raise TrainingError(f"{what}: parameters missing: {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")
    done = []
    for k, v in values.items():
        if k not in params:
            if strict:
                raise TrainingError(f"{what}: unexpected parameter {k} (different architecture?)")
            continue
        if tuple(params[k].shape) != tuple(np.shape(v)):
            raise TrainingError(f"{what}: {k} has shape {tuple(np.shape(v))}, this network needs "
                                f"{tuple(params[k].shape)} (different architecture or class count?)")
        params[k].d = np.asarray(v, np.float32)
        done.append(k)
    return done


