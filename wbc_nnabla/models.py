"""ResNet graphs of the paper's Fig. 4 (section II.4), in nnabla.

In the style of torchvision's ``resnet.py``: the figure's structure is visible
in :func:`resnet`. Parameter names follow torchvision (``conv1``, ``bn1``,
``layer1/0/conv1``, ..., ``fc``) so weights from other frameworks map by name.

Input convention: ``x`` is float32 ``(N, 3, H, W)``, RGB scaled to [0, 1]
(what ``data_iterator_csv_dataset(..., normalize=True)`` yields); the graph
subtracts the ImageNet mean and divides by its standard deviation itself, so
the exported ``.nnp``/ONNX takes the same input. Any ``H, W`` >= 32 works:
global average pooling makes the classifier size-independent (the paper
trains at 480x480 and infers at 320x320).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: (block kind, blocks per stage) of each supported depth.
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


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


def conv_bn(x, out_channels: int, kernel: int, stride: int, name: str, bn_name: str,
            test: bool) -> nn.Variable:
    """Convolution (no bias) then batch normalisation, ``same``-style padding."""
    pad = (kernel // 2, kernel // 2)
    h = PF.convolution(x, out_channels, (kernel, kernel), pad=pad, stride=(stride, stride),
                       with_bias=False, name=name)
    return PF.batch_normalization(h, batch_stat=not test, name=bn_name)


def basic_block(x, planes: int, stride: int, test: bool, name: str) -> nn.Variable:
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
    with nn.parameter_scope(name):
        h = F.relu(conv_bn(x, planes, 3, stride, "conv1", "bn1", test))
        h = conv_bn(h, planes, 3, 1, "conv2", "bn2", test)
        shortcut = x
        if stride != 1 or x.shape[1] != planes:
            with nn.parameter_scope("downsample"):
                shortcut = conv_bn(x, planes, 1, stride, "0", "1", test)
    return F.relu(h + shortcut)


def bottleneck(x, planes: int, stride: int, test: bool, name: str) -> nn.Variable:
    """1x1 reduce, 3x3, 1x1 expand (x4), with a projection shortcut when shapes differ."""
    with nn.parameter_scope(name):
        h = F.relu(conv_bn(x, planes, 1, 1, "conv1", "bn1", test))
        h = F.relu(conv_bn(h, planes, 3, stride, "conv2", "bn2", test))
        h = conv_bn(h, planes * 4, 1, 1, "conv3", "bn3", test)
        shortcut = x
        if stride != 1 or x.shape[1] != planes * 4:
            with nn.parameter_scope("downsample"):
                shortcut = conv_bn(x, planes * 4, 1, stride, "0", "1", test)
    return F.relu(h + shortcut)


def resnet(x: nn.Variable, arch: str = "resnet18", num_classes: int = 6, test: bool = False,
           return_features: bool = False):
    """The ResNet of Fig. 4: logits ``(N, num_classes)`` for a [0, 1] batch ``(N, 3, H, W)``.

    arch: ``resnet18`` (the paper's), ``resnet34`` or ``resnet50``.
    test: use BatchNorm running statistics (validation/inference graphs).
    return_features: also return the last convolutional stage ``(N, C, H/32, W/32)``
        (for Grad-CAM).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    kind, layers = ARCHS[arch]
    block = basic_block if kind == "basic" else bottleneck
    h = normalize(x)
    h = F.relu(conv_bn(h, 64, 7, 2, "conv1", "bn1", test))          # 7x7/2, 64
    h = F.max_pooling(h, (3, 3), (2, 2), pad=(1, 1))                  # 3x3/2 max pool
    for stage, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n_blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            h = block(h, planes, stride, test, f"layer{stage}/{i}")
    features = h
    h = F.global_average_pooling(h)                                    # (N, C, 1, 1)
    logits = PF.affine(h, num_classes, name="fc")                      # fully connected, 6 outputs
    return (logits, features) if return_features else logits


def resnet18(x: nn.Variable, num_classes: int = 6, test: bool = False, return_features: bool = False):
    """ResNet-18 with a ``num_classes``-output classifier (the paper's network)."""
    return resnet(x, "resnet18", num_classes, test, return_features)


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
    for arch, (kind, layers) in ARCHS.items():
        if tuple(layers) == blocks and (kind == "bottleneck") == bottle:
            return arch
    raise ValueError(f"parameters do not form a supported ResNet (blocks per stage {blocks})")


# ----------------------------------------------------------------------------- model files
#
# A wbc_nnabla model file is a standard nnabla ``.nnp`` (loadable by
# ``nnabla.utils.nnp_graph.NnpLoader`` and ``nnabla_cli infer``) with:
#   network "inference": input "x" (N, 3, S, S) float32 RGB in [0, 1],
#                        output "y" (N, C) softmax probabilities (test-mode BatchNorm);
#   executor "inference" over it;
#   an extra zip member "wbc_nnabla.json" with MODEL_META (arch, class names,
#   input size), which nnabla's loaders ignore.

import json as _json
import zipfile as _zipfile

META_NAME = "wbc_nnabla.json"


def model_meta(arch: str, class_names: Sequence[str], size: int, **extra) -> dict:
    """The description stored with a model: ``arch``, ``class_names``, ``input_size`` (pixels)."""
    from . import __version__
    return dict(format="wbc_nnabla-model/1", arch=arch, class_names=list(class_names),
                num_classes=len(class_names), input_size=int(size), wbc_nnabla=__version__, **extra)


def save_nnp(path, params: dict, meta: dict, batch_size: int = 1) -> None:
    """Save parameters ``{name: ndarray or nn.Variable}`` as a self-describing inference ``.nnp``.

    The graph is rebuilt from ``meta['arch']``/``meta['num_classes']`` at
    ``meta['input_size']`` in test mode, so the file holds only what inference needs.
    Written atomically.
    """
    import nnabla.utils.save as nn_save

    from .io import atomic_path
    size = int(meta["input_size"])
    with nn.parameter_scope("__save_nnp"):
        for k, v in params.items():
            arr = v.d if isinstance(v, nn.Variable) else np.asarray(v)
            nn.parameter.get_parameter_or_create(k, arr.shape, need_grad="/mean" not in k and "/var" not in k)
            nn.get_parameters(grad_only=False)[k].d = arr
        x = nn.Variable(input_shape(batch_size, size))
        y = F.softmax(resnet(x, meta["arch"], int(meta["num_classes"]), test=True))
        contents = {
            "networks": [{"name": "inference", "batch_size": batch_size,
                          "outputs": {"y": y}, "names": {"x": x}}],
            "executors": [{"name": "inference", "network": "inference", "data": ["x"], "output": ["y"]}],
        }
        with atomic_path(path) as tmp:
            nn_save.save(str(tmp), contents, variable_batch_size=True)
            with _zipfile.ZipFile(tmp, "a") as z:
                z.writestr(META_NAME, _json.dumps(meta, indent=2))
    _drop_scope("__save_nnp")


def _drop_scope(scope: str) -> None:
    # nnabla has no public "delete scope"; parameters created under a temporary
    # scope are removed from the global dict so they never leak into training.
    import nnabla.parameter as P
    P.current_scope.pop(scope, None)


def read_meta(path) -> dict:
    """The model description stored in a wbc_nnabla ``.nnp``; ``{}`` for a plain nnabla ``.nnp``."""
    try:
        with _zipfile.ZipFile(path) as z:
            if META_NAME in z.namelist():
                return _json.loads(z.read(META_NAME))
    except _zipfile.BadZipFile:
        raise ValueError(f"{path}: not an .nnp file (expected a zip archive written by nnabla)") from None
    return {}


def load_parameters(path) -> dict:
    """Parameters ``{name: ndarray}`` of a ``.nnp`` or ``.h5`` file, without touching the global scope."""
    with nn.parameter_scope("__load"):
        nn.load_parameters(str(path))
        params = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    _drop_scope("__load")
    return params
