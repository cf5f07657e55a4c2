"""ResNet graphs of the paper's Fig. 4 (section II.4), in nnabla.

In the style of torchvision's ``resnet.py``: :data:`ARCHS` names each depth's
block function and blocks per stage, and :func:`stages` does the
``_make_layer`` wiring once (which block has stride 2, which has a projection
shortcut, channels per stage). Every consumer of the topology reads
:func:`stages`: the nnabla graph (:func:`resnet`), the ONNX exporter
(:mod:`wbc_nnabla.export`) and the ImageNet weight mapping
(:mod:`wbc_nnabla.pretrained`). Parameter names follow torchvision (``conv1``,
``bn1``, ``layer1/0/conv1``, ..., ``fc``) so weights from other frameworks map
by name.

Normalisation (``norm``, :data:`NORMS`): ``batch`` is the paper's BatchNorm
(``<bn>/bn/{beta,gamma,mean,var}``); ``group`` puts GroupNorm (Wu & He 2018,
:data:`GN_GROUPS` groups, ``PF.group_normalization``) in the same places, under
the same torchvision scope names with nnabla's own parameter scope
(``<bn>/group_normalization/{beta,gamma}``, no running statistics), as
torchvision keeps ``bn1`` when given ``norm_layer=GroupNorm``; ``ibn`` is IBN-Net's
IBN-a (Pan et al. 2018, :func:`ibn_channels`): the first normalisation of every block of
stages 1-3 instance-normalises half its channels (``<bn>/instance_normalization/{beta,gamma}``)
and batch-normalises the rest (``<bn>/bn/...``), every other one is BatchNorm. The parameter
names alone tell the three apart (:func:`norm_of`).

Input convention: ``x`` is float32 ``(N, 3, H, W)``, RGB scaled to [0, 1]
(what ``data_iterator_csv_dataset(..., normalize=True)`` yields); the graph
subtracts the ImageNet mean and divides by its standard deviation itself, so
the exported ``.nnp``/ONNX takes the same input. Any ``H, W`` >= 32 works:
global average pooling makes the classifier size-independent (the paper
trains at 480x480 and infers at 320x320).
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.initializer as I
import nnabla.parametric_functions as PF
import numpy as np

from .errors import InputError
from .recipe import ARCH_NAMES, GN_GROUPS, NORM_NAMES, WEIGHT_INIT_NAMES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: BatchNorm running-statistics decay ``d`` in ``r_t = d r_{t-1} + (1 - d) b_t`` (nnabla's default).
BN_DECAY = 0.9
#: BatchNorm epsilon added to the variance (nnabla's default).
BN_EPS = 1e-5
#: GroupNorm (and IBN's instance normalisation) epsilon added to each group's variance (nnabla's
#: default; ``y = (x - mu) / sqrt(var + eps)``).
GN_EPS = 1e-5
#: Normalisation layers (``norm``) and the nnabla parameter scope of each under a ``ConvBN.bn`` scope.
NORMS = {"batch": "bn", "group": "group_normalization", "ibn": "instance_normalization"}
assert tuple(NORMS) == NORM_NAMES, "recipe.NORM_NAMES (the nnabla-free registry) lists these layers"
#: IBN-a: the residual stages whose blocks' first normalisation is an IBN layer, and the share of
#: its channels instance-normalised (IBN-Net's ``ratio``; Pan et al. 2018, section 3.2).
IBN_STAGES = (1, 2, 3)
IBN_RATIO = 0.5
#: Convolution weight initialisers: ``glorot`` (nnabla's default, uniform) or ``he``
#: (Kaiming normal, fan_out, as torchvision's ResNet).
WEIGHT_INITS = WEIGHT_INIT_NAMES
#: Bottleneck width (``planes``) of the four residual stages.
STAGE_PLANES = (64, 128, 256, 512)


# ----------------------------------------------------------------------------- topology


@dataclass(frozen=True)
class ConvBN:
    """One convolution (no bias, ``same``-style padding) followed by BatchNorm (or GroupNorm).

    conv: parameter scope of the convolution (weights ``<conv>/conv/W``).
    bn: parameter scope of the normalisation (BatchNorm: ``<bn>/bn/{beta,gamma,mean,var}``;
        GroupNorm: ``<bn>/group_normalization/{beta,gamma}``).
    kernel: square kernel side.
    in_channels: channels in.
    out_channels: channels out.
    stride: stride in both directions.
    """

    conv: str
    bn: str
    kernel: int
    in_channels: int
    out_channels: int
    stride: int

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        """``(out_channels, in_channels, kernel, kernel)``."""
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)


#: The stem: 7x7/2 convolution to 64 channels (followed by ReLU and a 3x3/2 max pool).
STEM = ConvBN("conv1", "bn1", 7, 3, 64, 2)


@dataclass(frozen=True)
class Block:
    """One residual block of :func:`stages`: where it sits and how it is wired.

    stage: 1-4 (``layerK``).
    index: position in the stage (0-based).
    kind: ``basic`` (two 3x3) or ``bottleneck`` (1x1, 3x3, 1x1 x4).
    planes: width of the block's 3x3 convolution.
    out_channels: ``planes * expansion``.
    stride: 2 for the first block of stages 2-4 (on the 3x3 convolution), else 1.
    has_projection: the shortcut is a 1x1 convolution + BN (``downsample``) because
        the stride or the channel count changes; else it is the identity.
    """

    stage: int
    index: int
    kind: str
    in_channels: int
    planes: int
    out_channels: int
    stride: int
    has_projection: bool

    @property
    def name(self) -> str:
        """Parameter scope prefix, e.g. ``layer2/0``."""
        return f"layer{self.stage}/{self.index}"

    @property
    def convs(self) -> Tuple[ConvBN, ...]:
        """The main branch in graph order; ReLU follows each but the last (added to the shortcut first)."""
        p, c = self.name, self.planes
        if self.kind == "basic":
            return (ConvBN(f"{p}/conv1", f"{p}/bn1", 3, self.in_channels, c, self.stride),
                    ConvBN(f"{p}/conv2", f"{p}/bn2", 3, c, c, 1))
        return (ConvBN(f"{p}/conv1", f"{p}/bn1", 1, self.in_channels, c, 1),
                ConvBN(f"{p}/conv2", f"{p}/bn2", 3, c, c, self.stride),
                ConvBN(f"{p}/conv3", f"{p}/bn3", 1, c, self.out_channels, 1))

    @property
    def projection(self) -> Optional[ConvBN]:
        """The 1x1 ``downsample`` shortcut (``None`` for an identity shortcut)."""
        if not self.has_projection:
            return None
        return ConvBN(f"{self.name}/downsample/0", f"{self.name}/downsample/1", 1,
                      self.in_channels, self.out_channels, self.stride)


def stages(arch: str) -> List[Block]:
    """The residual blocks of ``arch`` in graph order (torchvision's ``_make_layer``, once).

    The first block of stages 2-4 halves the resolution (stride 2); a block
    whose stride is not 1 or whose input channels differ from its output has a
    projection shortcut.
    """
    block_fn, layers = _arch(arch)
    blocks, in_channels = [], STEM.out_channels
    for stage, (planes, n_blocks) in enumerate(zip(STAGE_PLANES, layers), start=1):
        for i in range(n_blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            out = planes * block_fn.expansion
            blocks.append(Block(stage, i, block_fn.kind, in_channels, planes, out, stride,
                                has_projection=stride != 1 or in_channels != out))
            in_channels = out
    return blocks


def conv_layers(arch: str) -> List[ConvBN]:
    """Every convolution + BN of ``arch`` in the order the graph creates them (stem, then each
    block's main branch and its projection)."""
    out = [STEM]
    for b in stages(arch):
        out += list(b.convs) + ([b.projection] if b.has_projection else [])
    return out


# ----------------------------------------------------------------------------- graph pieces


def normalize(x: nn.Variable) -> nn.Variable:
    """ImageNet normalisation of a [0, 1] RGB batch ``(N, 3, H, W)``.

    The constants are stored as non-trainable parameters ``preprocess/scale``
    and ``preprocess/bias`` (``(1, 3, 1, 1)``): a plain constant Variable would
    not be saved in an ``.nnp``, while parameters travel with the model.
    """
    scale = 1.0 / np.array(IMAGENET_STD, np.float32)
    bias = -np.array(IMAGENET_MEAN, np.float32) * scale
    with nn.parameter_scope("preprocess"):
        s = nn.parameter.get_parameter_or_create("scale", (1, 3, 1, 1), scale.reshape(1, 3, 1, 1), need_grad=False)
        b = nn.parameter.get_parameter_or_create("bias", (1, 3, 1, 1), bias.reshape(1, 3, 1, 1), need_grad=False)
    return x * s + b


def conv_initializer(spec: ConvBN, weight_init: str = "glorot") -> I.BaseInitializer:
    """The weight initialiser of a convolution (drawn from ``nnabla.random.prng``).

    ``glorot``: uniform in +-sqrt(6 / (k^2 (C_in + C_out))), exactly what
    ``PF.convolution`` uses when given none. ``he``: normal with standard
    deviation sqrt(2 / (k^2 C_out)) (Kaiming normal, fan_out, as torchvision).
    """
    kernel = (spec.kernel, spec.kernel)
    if weight_init == "glorot":
        return I.UniformInitializer(I.calc_uniform_lim_glorot(spec.in_channels, spec.out_channels, kernel))
    if weight_init == "he":
        return I.NormalInitializer(I.calc_normal_std_he_backward(spec.in_channels, spec.out_channels, kernel))
    raise InputError(f"weight_init {weight_init!r}: choose one of {', '.join(WEIGHT_INITS)}")


def channels(h: nn.Variable, start: int, stop: int) -> nn.Variable:
    """Channels ``start:stop`` of ``h`` ``(N, C, H, W)``, every image and pixel.

    ``h[:, start:stop]`` would store the build-time N, H and W as the slice's stops in a saved
    ``.nnp``, so that the graph loaded at another batch size or input size would cut the batch;
    stops past the end are clamped, so these stay valid at any N, H, W.
    """
    whole = 2 ** 30
    return F.slice(h, (0, start, 0, 0), (whole, stop, whole, whole))


def ibn_channels(spec: ConvBN, norm: str) -> int:
    """How many of the first channels after ``spec`` IBN-a instance-normalises: ``IBN_RATIO`` of them
    after the first convolution of each block of :data:`IBN_STAGES` when ``norm`` is ``ibn``, else 0.

    IBN-Net puts instance normalisation in the shallow stages, where appearance (stain, camera)
    lives, and keeps BatchNorm in the rest and in layer4, where the class lives (Pan et al. 2018).
    """
    stages_ = "".join(str(s) for s in IBN_STAGES)
    if norm == "ibn" and re.fullmatch(rf"layer[{stages_}]/\d+/conv1", spec.conv):
        return int(spec.out_channels * IBN_RATIO)
    return 0


def norm_layer(h: nn.Variable, spec: ConvBN, test: bool, norm: str = "batch") -> nn.Variable:
    """The normalisation after convolution ``spec``, in scope ``spec.bn`` (same shape out).

    batch: ``PF.batch_normalization`` (``test``: running statistics, else batch statistics,
        updating them).
    group: ``PF.group_normalization`` with :data:`GN_GROUPS` groups of ``C / 32`` channels,
        statistics per image and group in training and test alike (``test`` changes nothing).
    ibn: BatchNorm, except where :func:`ibn_channels` is > 0: ``PF.instance_normalization`` of
        those first channels (per image and channel, ``test`` changes nothing) beside BatchNorm
        of the rest, concatenated (IBN-a).
    """
    if norm not in NORMS:
        raise InputError(f"norm {norm!r}: choose one of {', '.join(NORMS)}")
    if norm == "group":
        return PF.group_normalization(h, GN_GROUPS, eps=GN_EPS, name=spec.bn)
    half = ibn_channels(spec, norm)
    if half:
        inst = PF.instance_normalization(channels(h, 0, half), eps=GN_EPS, name=spec.bn)
        batch = PF.batch_normalization(channels(h, half, h.shape[1]), decay_rate=BN_DECAY, eps=BN_EPS,
                                       batch_stat=not test, name=spec.bn)
        return F.concatenate(inst, batch, axis=1)
    return PF.batch_normalization(h, decay_rate=BN_DECAY, eps=BN_EPS, batch_stat=not test, name=spec.bn)


def conv_bn(x: nn.Variable, spec: ConvBN, test: bool, weight_init: str = "glorot",
            norm: str = "batch") -> nn.Variable:
    """Convolution ``spec`` (no bias, padding ``kernel // 2``) then normalisation (:func:`norm_layer`).

    x: ``(N, spec.in_channels, H, W)``.
    test: BatchNorm uses its running statistics (else batch statistics, updating them).
    norm: ``batch``, ``group`` or ``ibn`` (:data:`NORMS`).

    Returns ``(N, spec.out_channels, H / stride, W / stride)``.
    """
    if x.shape[1] != spec.in_channels:
        raise InputError(f"{spec.conv}: input has {x.shape[1]} channels, the topology says {spec.in_channels}")
    k, s = spec.kernel, spec.stride
    h = PF.convolution(x, spec.out_channels, (k, k), pad=(k // 2, k // 2), stride=(s, s), with_bias=False,
                       w_init=conv_initializer(spec, weight_init), name=spec.conv)
    return norm_layer(h, spec, test, norm)


def shortcut(x: nn.Variable, block: Block, test: bool, weight_init: str = "glorot",
             norm: str = "batch") -> nn.Variable:
    """The block's shortcut: ``x`` itself, or its 1x1 projection + BN (``downsample``)."""
    return conv_bn(x, block.projection, test, weight_init, norm) if block.has_projection else x


def basic_block(x: nn.Variable, block: Block, test: bool, weight_init: str = "glorot",
                norm: str = "batch") -> nn.Variable:
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
    conv1, conv2 = block.convs
    h = F.relu(conv_bn(x, conv1, test, weight_init, norm))
    h = conv_bn(h, conv2, test, weight_init, norm)
    return F.relu(h + shortcut(x, block, test, weight_init, norm))


def bottleneck(x: nn.Variable, block: Block, test: bool, weight_init: str = "glorot",
               norm: str = "batch") -> nn.Variable:
    """1x1 reduce, 3x3, 1x1 expand (x4), with a projection shortcut when shapes differ."""
    conv1, conv2, conv3 = block.convs
    h = F.relu(conv_bn(x, conv1, test, weight_init, norm))
    h = F.relu(conv_bn(h, conv2, test, weight_init, norm))
    h = conv_bn(h, conv3, test, weight_init, norm)
    return F.relu(h + shortcut(x, block, test, weight_init, norm))


# torchvision's BasicBlock.expansion / Bottleneck.expansion; kind names the layout of Block.convs.
basic_block.kind, basic_block.expansion = "basic", 1
bottleneck.kind, bottleneck.expansion = "bottleneck", 4

#: (block function, blocks per stage) of each supported depth.
ARCHS = {
    "resnet18": (basic_block, (2, 2, 2, 2)),
    "resnet34": (basic_block, (3, 4, 6, 3)),
    "resnet50": (bottleneck, (3, 4, 6, 3)),
}
assert tuple(ARCHS) == ARCH_NAMES, "recipe.ARCH_NAMES (the nnabla-free registry) lists these depths"


def _arch(arch: str):
    if arch not in ARCHS:
        raise InputError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[arch]


# ----------------------------------------------------------------------------- networks


#: A training-graph step on the output of a residual stage: ``(features, stage 1-4) -> features``
#: of the same shape (MixStyle, :func:`wbc_nnabla.augmentation.mixstyle`).
StageHook = Callable[[nn.Variable, int], nn.Variable]


def backbone(x: nn.Variable, arch: str = "resnet18", test: bool = False,
             weight_init: str = "glorot", norm: str = "batch",
             after_stage: Optional[StageHook] = None) -> nn.Variable:
    """Fig. 4 up to the last convolutional stage: ``(N, C, ceil(H/32), ceil(W/32))`` features.

    x: [0, 1] RGB ``(N, 3, H, W)``.
    test: use BatchNorm running statistics (validation/inference graphs).
    weight_init: initialiser of new convolution weights (:data:`WEIGHT_INITS`).
    norm: ``batch`` (the paper's BatchNorm), ``group`` (GroupNorm) or ``ibn`` (IBN-a; :data:`NORMS`).
    after_stage: applied to the output of each residual stage, ``after_stage(h, stage)``
        (training graphs only; ``None``: the plain network every ``.nnp`` holds).

    C is the last block's ``out_channels`` (512 for ResNet-18).
    """
    block_fn, _ = _arch(arch)
    if weight_init not in WEIGHT_INITS:
        raise InputError(f"weight_init {weight_init!r}: choose one of {', '.join(WEIGHT_INITS)}")
    if norm not in NORMS:
        raise InputError(f"norm {norm!r}: choose one of {', '.join(NORMS)}")
    h = normalize(x)
    h = F.relu(conv_bn(h, STEM, test, weight_init, norm))               # 7x7/2, 64
    h = F.max_pooling(h, (3, 3), (2, 2), pad=(1, 1))                    # 3x3/2 max pool
    blocks = stages(arch)
    for block, following in zip(blocks, blocks[1:] + [None]):
        h = block_fn(h, block, test, weight_init, norm)
        if after_stage is not None and (following is None or following.stage != block.stage):
            h = after_stage(h, block.stage)
    return h


def head(features: nn.Variable, num_classes: int) -> nn.Variable:
    """Global average pooling and the fully connected classifier ``fc``: logits ``(N, num_classes)``.

    The ``fc`` weight keeps Glorot-uniform initialisation (nnabla's default) whatever
    ``weight_init`` the convolutions use, as torchvision keeps its Linear default.
    """
    h = F.global_average_pooling(features)                              # (N, C, 1, 1)
    limit = I.calc_uniform_lim_glorot(features.shape[1], num_classes)
    return PF.affine(h, num_classes, w_init=I.UniformInitializer(limit), name="fc")


def resnet(x: nn.Variable, arch: str = "resnet18", num_classes: int = 6, test: bool = False,
           weight_init: str = "glorot", norm: str = "batch",
           after_stage: Optional[StageHook] = None) -> nn.Variable:
    """The ResNet of Fig. 4: logits ``(N, num_classes)`` for a [0, 1] batch ``(N, 3, H, W)``.

    arch: ``resnet18`` (the paper's), ``resnet34`` or ``resnet50``.
    test: use BatchNorm running statistics (validation/inference graphs).
    weight_init: ``glorot`` (default, nnabla's) or ``he`` for new convolution weights.
    norm: ``batch`` (default, the paper's BatchNorm), ``group`` (GroupNorm, 32 groups) or ``ibn`` (IBN-a).
    after_stage: training-graph step after each residual stage (:func:`backbone`).
    """
    return head(backbone(x, arch, test, weight_init, norm, after_stage), num_classes)


def resnet_features(x: nn.Variable, arch: str = "resnet18", num_classes: int = 6, test: bool = False,
                    weight_init: str = "glorot", norm: str = "batch") -> Tuple[nn.Variable, nn.Variable]:
    """(logits ``(N, num_classes)``, last convolutional stage ``(N, C, H/32, W/32)``) of :func:`resnet`
    (for Grad-CAM). Same parameters as :func:`resnet`."""
    features = backbone(x, arch, test, weight_init, norm)
    return head(features, num_classes), features


def resnet18(x: nn.Variable, num_classes: int = 6, test: bool = False, weight_init: str = "glorot",
             norm: str = "batch") -> nn.Variable:
    """ResNet-18 with a ``num_classes``-output classifier (the paper's network)."""
    return resnet(x, "resnet18", num_classes, test, weight_init, norm)


def inference_network(x: nn.Variable, meta: dict) -> nn.Variable:
    """Softmax probabilities ``(N, C)`` of the test-mode network ``meta`` describes (``arch``,
    ``num_classes``, ``norm``: ``batch`` when absent): the graph every saved ``.nnp`` holds and
    the nnabla backend runs."""
    return F.softmax(resnet(x, meta["arch"], int(meta["num_classes"]), test=True,
                            norm=meta.get("norm") or "batch"))


# ----------------------------------------------------------------------------- parameters


def private_scope(params: dict) -> dict:
    """A parameter dict of fixed (``need_grad=False``) copies of ``params`` ``{name: ndarray}``.

    Graphs built under ``nn.parameter_scope("", private_scope(params))`` never touch
    nnabla's global parameters, so a model can be used beside a training run.
    """
    scope: dict = OrderedDict()
    with nn.parameter_scope("", scope):
        for k, v in params.items():
            nn.parameter.get_parameter_or_create(k, v.shape, v, need_grad=False)
    return scope


def clear_scope(name: str) -> None:
    """Remove the parameter scope ``name`` and every parameter under it from the current scope.

    For a scope that must start empty (the training graphs'); code that only
    needs temporary parameters builds under a dict of its own instead
    (``nn.parameter_scope("", {})``).
    """
    nn.parameter.pop_parameter(name)


def count_parameters(grad_only: bool = True) -> int:
    """Number of scalars in the current parameter scope (trainable ones by default)."""
    return int(sum(np.prod(v.shape) for v in nn.get_parameters(grad_only=grad_only).values()))


def input_shape(batch_size: int, size: int) -> Tuple[int, int, int, int]:
    """Network input shape ``(N, 3, size, size)``."""
    return (batch_size, 3, size, size)


def class_count_of(params: dict) -> int:
    """Number of classifier outputs in a parameter dict (``fc/affine/W`` is ``(C_in, num_classes)``)."""
    return int(params["fc/affine/W"].shape[1])


def arch_of(params: Sequence[str]) -> str:
    """Guess the ResNet depth from parameter names (``layerK/i/...`` counts, bottleneck ``conv3``)."""
    names = list(params)
    blocks = tuple(len({n.split("/")[1] for n in names if n.startswith(f"layer{k}/")}) for k in range(1, 5))
    bottle = any("/conv3/" in n for n in names)
    for arch, (block_fn, layers) in ARCHS.items():
        if tuple(layers) == blocks and (block_fn.kind == "bottleneck") == bottle:
            return arch
    raise InputError(f"parameters do not form a supported ResNet (blocks per stage {blocks})")


def norm_of(params: Sequence[str]) -> str:
    """The normalisation (:data:`NORMS` key) of a parameter dict, from its names.

    ``group`` when any name has the GroupNorm scope (``.../group_normalization/...``), ``ibn``
    when any has the instance-normalisation scope (beside BatchNorm), else ``batch``; GroupNorm
    beside either other kind is no network of this module (InputError).
    """
    found = {norm for norm, scope in NORMS.items() if any(f"/{scope}/" in n for n in params)}
    if "group" in found and len(found) > 1:
        raise InputError("parameters hold both BatchNorm (*/bn/*, or IBN's */instance_normalization/*) and "
                         "GroupNorm (*/group_normalization/*) layers; a network of models.py has one kind")
    return "ibn" if "ibn" in found else (found.pop() if found else "batch")
