"""ImageNet weights for transfer learning (section II.4), mapped onto the ResNets of :mod:`wbc_nnabla.models`.

The paper starts ResNet-18 from ImageNet weights (Neural Network Console's
pretrained ResNet-18). Two nnabla sources exist; both are read from local
files only (nothing is downloaded here):

* nnabla's model zoo ``Resnet-<N>.nnp`` (what ``nnabla.models.imagenet.ResNet18``
  caches in ``~/nnabla_data/nnp_models/imagenet/``): a Neural Network Console
  graph whose parameters carry NNC layer names (``Convolution_3/W`` ...) and
  whose input is an uint8-range RGB image. Names are not relied on: layers are
  matched by the graph's structure (see :func:`map_zoo_nnp`).
* nnabla-examples' ImageNet ``rn18-nhwc*.h5`` / ``rn50-nchw.h5``
  (``image-classification/imagenet/models/base.py``): names
  ``conv1/conv/W``, ``res{s}/layer{j}/basicblock{1,2}/...``,
  ``.../basicblock_s/shortcut_conv/...``, ``fc/conv/{W,b}``; mostly stored
  channels-last (NHWC) with a zero 4th input channel in ``conv1``.

Either way the classifier (fc) is not loaded: the head is replaced by a fresh
``num_classes``-output affine layer.

Both sources are BatchNorm networks. For a GroupNorm network (``norm='group'``)
only the convolution weights (and ``preprocess``) are taken: BatchNorm's
scale/shift were learnt for its running statistics, not for GroupNorm's
per-image group statistics, so the GroupNorm layers keep their initial
gamma 1, beta 0 (a documented choice, docs/training.md "Normalisation").
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
from google.protobuf import text_format
from nnabla.utils import nnabla_pb2

from . import models
from .errors import WBCError
from .modelfile import load_parameters

ZOO_NAMES = {"resnet18": "Resnet-18.nnp", "resnet34": "Resnet-34.nnp", "resnet50": "Resnet-50.nnp"}
EXAMPLES_NAMES = {"resnet18": "rn18-nhwc.h5", "resnet34": "rn34-nhwc.h5", "resnet50": "rn50-nchw.h5"}
_ZOO_URL = "https://nnabla.org/pretrained-models/nnp_models/imagenet/Resnet-{n}/Resnet-{n}.nnp"
_EXAMPLES_URL = "https://nnabla.org/pretrained-models/nnabla-examples/ilsvrc2012/{name}"


class PretrainedError(WBCError, ValueError):
    """A missing or unusable ImageNet weight file (the message says how to get one)."""


# ----------------------------------------------------------------------------- finding the file


def imagenet_cache_dir():
    """Where ``nnabla.models.imagenet`` caches zoo files: ``~/nnabla_data/nnp_models/imagenet``."""
    return os.path.join(os.path.expanduser("~"), "nnabla_data", "nnp_models", "imagenet")


def _how_to_get(arch: str) -> str:
    n = arch.replace("resnet", "")
    return (f"On a machine with internet run `python -c \"from nnabla.models.imagenet import ResNet{n}; "
            f"ResNet{n}()\"` (it caches {ZOO_NAMES[arch]} in ~/nnabla_data/nnp_models/imagenet/), or download "
            f"{_ZOO_URL.format(n=n)} or {_EXAMPLES_URL.format(name=EXAMPLES_NAMES[arch])}; copy the file to "
            f"{imagenet_cache_dir()}/ (or pass its path), or use --pretrained none to train from scratch")


def find_pretrained(spec: str, arch: str = "resnet18"):
    """Resolve ``--pretrained``: ``none`` -> None, ``imagenet`` -> the cached zoo/examples file, else a path.

    Raises :class:`PretrainedError` naming the file, where to put it and how to get it.
    """
    if spec is None or str(spec).lower() == "none":
        return None
    if arch not in ZOO_NAMES:
        raise PretrainedError(f"no ImageNet weights known for arch {arch!r}")
    if str(spec).lower() == "imagenet":
        d = imagenet_cache_dir()
        for name in (ZOO_NAMES[arch], EXAMPLES_NAMES[arch]):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
        raise PretrainedError(f"ImageNet {arch} weights not found: expected {d}/{ZOO_NAMES[arch]} "
                              f"(or {EXAMPLES_NAMES[arch]}). {_how_to_get(arch)}")
    if not os.path.isfile(spec):
        raise PretrainedError(f"--pretrained {spec}: no such file. {_how_to_get(arch)}")
    return str(spec)


# ----------------------------------------------------------------------------- nnabla-examples .h5


def _bn_dict(bn: str, beta, gamma, mean, var) -> dict:
    c = int(np.asarray(beta).size)
    return {f"{bn}/bn/{k}": np.asarray(v, np.float32).reshape(1, c, 1, 1)
            for k, v in (("beta", beta), ("gamma", gamma), ("mean", mean), ("var", var))}


def examples_names(arch: str):
    """``[(their prefix, our ConvBN)]``: nnabla-examples' name of every convolution + BN of ``arch``.

    Theirs: ``conv1``, ``res{s}/layer{i+1}/{basicblock|bottleneck}{k}`` and
    ``res{s}/layer{i+1}/{...}_s/shortcut_conv`` (each with ``/conv/W`` and ``/bn/...``).
    """
    pairs = [("conv1", models.STEM)]
    for b in models.stages(arch):
        theirs = f"res{b.stage}/layer{b.index + 1}/{'basicblock' if b.kind == 'basic' else 'bottleneck'}"
        pairs += [(f"{theirs}{k}", c) for k, c in enumerate(b.convs, start=1)]
        if b.has_projection:
            pairs.append((f"{theirs}_s/shortcut_conv", b.projection))
    return pairs


def map_examples_h5(src: dict, arch: str) -> dict:
    """nnabla-examples ImageNet parameters (NHWC or NCHW) -> our names and NCHW layout (no fc)."""
    nhwc = next(v for k, v in src.items() if k.endswith("bn/beta")).shape[1] == 1

    def conv_w(name):
        w = src[name]
        if nhwc:
            w = np.transpose(w, (0, 3, 1, 2))
        return np.ascontiguousarray(w[:, :3] if name == "conv1/conv/W" else w, np.float32)

    out = {}
    for theirs, ours in examples_names(arch):
        key = f"{theirs}/conv/W"
        if key not in src:
            raise PretrainedError(f"parameter {key} missing: not an nnabla-examples {arch} file")
        out[f"{ours.conv}/conv/W"] = conv_w(key)
        out.update(_bn_dict(ours.bn, *(src[f"{theirs}/bn/{k}"] for k in ("beta", "gamma", "mean", "var"))))
    return out


# ----------------------------------------------------------------------------- model-zoo .nnp (NNC graph)


def _zoo_network(path):
    """(functions, parameter dict) of the largest network in an NNC/zoo ``.nnp``."""
    proto = nnabla_pb2.NNablaProtoBuf()
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".nntxt") or name.endswith(".prototxt"):
                text_format.Merge(z.read(name).decode("utf-8"), proto)
            elif name.endswith(".protobuf"):
                p = nnabla_pb2.NNablaProtoBuf()
                p.ParseFromString(z.read(name))
                proto.MergeFrom(p)
    if not proto.network:
        raise PretrainedError(f"{path}: no network in this .nnp")
    net = max(proto.network, key=lambda n: len(n.function))
    return list(net.function), load_parameters(path)


def _bn_after_conv(funcs, producer) -> dict:
    """{convolution weight name: the BatchNormalization fed by that convolution}."""
    bn_of = {}
    for f in funcs:
        if f.type in ("BatchNormalization", "FusedBatchNormalization"):
            p = producer.get(f.input[0])
            if p is not None and p.type == "Convolution":
                bn_of[p.input[1]] = f
    return bn_of


def map_zoo_nnp(path, arch: str) -> dict:
    """Model-zoo ``Resnet-N.nnp`` parameters -> our names, matched by graph structure (no fc).

    Convolutions are grouped by weight shape and paired in graph order with
    ours (within a shape group the order is forced by data dependencies); each
    BatchNormalization is paired through the convolution that feeds it. A
    convolution bias before BN is folded into the BN mean. Leading
    ``MulScalar``/``AddScalar`` input scaling (the zoo takes 0-255 RGB) goes
    into ``preprocess/scale``/``preprocess/bias``, so our [0, 1] input reproduces
    the zoo's first-layer input exactly.
    """
    funcs, src = _zoo_network(path)
    producer = {o: f for f in funcs for o in f.output}
    convs = [f for f in funcs if f.type == "Convolution"]
    bn_of = _bn_after_conv(funcs, producer)
    ours = models.conv_layers(arch)
    if len(convs) != len(ours):
        raise PretrainedError(f"{path}: {len(convs)} convolutions, {arch} has {len(ours)}: not a {arch} model")
    groups = {}
    for f in convs:
        groups.setdefault(tuple(src[f.input[1]].shape), []).append(f)
    out = {}
    for spec in ours:
        shape = spec.weight_shape
        if not groups.get(shape):
            raise PretrainedError(f"{path}: no convolution of shape {shape} left for {spec.conv}: not a {arch} model")
        f = groups[shape].pop(0)
        out[f"{spec.conv}/conv/W"] = src[f.input[1]].astype(np.float32)
        b = bn_of.get(f.input[1])
        if b is None:
            raise PretrainedError(f"{path}: convolution {f.name} is not followed by BatchNormalization")
        beta, gamma, mean, var = (src[v].reshape(-1) for v in b.input[1:5])
        if len(f.input) > 2 and f.input[2] in src:       # conv bias before BN: fold into the mean
            mean = mean - src[f.input[2]].reshape(-1)
        out.update(_bn_dict(spec.bn, beta, gamma, mean, var))
    out.update(_zoo_preprocess(funcs, producer, convs[0]))
    return out


def _zoo_preprocess(funcs, producer, first_conv) -> dict:
    """Our ``preprocess/scale,bias`` reproducing the zoo's scaling of its 0-255 RGB input.

    Walks back from the first convolution through ``MulScalar``/``AddScalar``
    (``ImageAugmentation`` is skipped: it is identity at test time) and composes
    them forwards into ``a * x255 + b``; our input is ``x255 / 255``.
    """
    chain = []
    v = first_conv.input[0]
    while v in producer:
        f = producer[v]
        if f.type not in ("MulScalar", "AddScalar", "ImageAugmentation", "Identity"):
            raise PretrainedError(f"unsupported input preprocessing function {f.type} ({f.name}) "
                                  f"before the first convolution")
        chain.append(f)
        v = f.input[0]
    a, b = 1.0, 0.0
    for f in reversed(chain):
        if f.type == "MulScalar":
            a, b = a * f.mul_scalar_param.val, b * f.mul_scalar_param.val
        elif f.type == "AddScalar":
            b = b + f.add_scalar_param.val
    return {"preprocess/scale": np.full((1, 3, 1, 1), 255.0 * a, np.float32),
            "preprocess/bias": np.full((1, 3, 1, 1), b, np.float32)}


# ----------------------------------------------------------------------------- either file


def load_imagenet(path, arch: str = "resnet18", norm: str = "batch") -> dict:
    """ImageNet backbone parameters from a zoo ``.nnp`` or nnabla-examples ``.h5``, in our names.

    Returns ``{name: ndarray}`` for every parameter of :func:`wbc_nnabla.models.resnet`
    except ``fc`` (and, for ``.h5`` files, ``preprocess``: nnabla-examples normalise
    with the same ImageNet mean/std as this graph). With ``norm='group'`` only the
    convolution weights ``*/conv/W`` and ``preprocess/*`` (the ImageNet files hold
    BatchNorm layers, which a GroupNorm network does not have). With ``norm='ibn'`` every
    BatchNorm but those of the IBN layers (:func:`wbc_nnabla.models.ibn_channels`), whose halves
    start afresh (gamma 1, beta 0, statistics 0 / 1).
    """
    params = _load_imagenet(path, arch)
    if norm == "group":
        return {k: v for k, v in params.items() if k.endswith("/conv/W") or k.startswith("preprocess/")}
    if norm == "ibn":
        ibn = {f"{spec.bn}/" for spec in models.conv_layers(arch) if models.ibn_channels(spec, norm)}
        return {k: v for k, v in params.items() if not any(k.startswith(p) for p in ibn)}
    return params


def _load_imagenet(path, arch: str) -> dict:
    path = str(path)
    try:
        if path.endswith(".nnp"):
            return map_zoo_nnp(path, arch)
        src = load_parameters(path)
    except PretrainedError:
        raise
    except Exception as e:  # nnabla raises bare RuntimeErrors for unreadable files
        raise PretrainedError(f"{path}: cannot read ImageNet weights ({type(e).__name__}: {e})") from None
    if "conv1/conv/W" not in src:
        raise PretrainedError(f"{path}: not an nnabla-examples ImageNet ResNet parameter file "
                              f"(no conv1/conv/W); expected {EXAMPLES_NAMES.get(arch)} or {ZOO_NAMES.get(arch)}")
    return map_examples_h5(src, arch)
