"""Grad-CAM maps: where the CNN looks (the paper's discussion, section IV).

Sasaki et al. (2020) ask in their discussion for Grad-CAM (Selvaraju et al.,
"Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) to see which parts of a leukocyte the ResNet-18 uses.
For an image and a class ``c``::

    A^k       = activation k of the last convolutional stage (``layer4``
                output, ``(K, h, w)`` = ``(512, ceil(S/32), ceil(S/32))`` for
                ResNet-18 at input size S: 10 x 10 at the paper's 320)
    alpha_k   = mean over the h x w positions of d(score_c) / dA^k
    map       = ReLU(sum_k alpha_k A^k)                         (h, w)

where ``score_c`` is the class logit (before the softmax: the exported
``.nnp`` outputs probabilities, so the graph is rebuilt from the parameters
with :func:`wbc_nnabla.models.resnet_features`). The network runs in test mode
(BatchNorm running statistics), as at inference. The map is resampled to the
input image's size (bilinear, each cell placed on the centre of its receptive
field, see :func:`upsample_map`) and divided by its maximum, so it lies in [0, 1].
See ``docs/gradcam.md`` for how to read it and its limits.

The model's parameters live in a private parameter dictionary: building a
:class:`GradCAM` never adds, changes or removes parameters of nnabla's global
scope (a training session in the same process is not disturbed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import nnabla as nn
import numpy as np

from . import classes, fileio, models, outputs
from .errors import InputError
from .predictor import cell_view, preprocess
from .modelfile import network_size, read_model

ImageLike = Union[str, Path, np.ndarray]


@dataclass
class CamResult:
    """Grad-CAM of one image.

    cam: float32 ``(H, W)`` in [0, 1], the map at the size of ``image``.
    raw: float32 ``(h, w)``, the un-normalised map at the ``layer4`` resolution
        (``ReLU(sum_k alpha_k A^k)``; all zeros when nothing supports the class).
    class_index: index of the class the map explains.
    class_name: name of the class the map explains.
    predicted_index: index of the model's top class.
    predicted_name: name of the model's top class.
    probability: softmax probability of the model's top class.
    class_probability: softmax probability of the explained class.
    image: uint8 ``(H, W, 3)``, the image as the model sees it, which the map is drawn on: the
        input itself, or, for a model ``adapt`` made, the input re-framed to the training scale
        and colour-standardised as ``predict`` shows it (:func:`wbc_nnabla.predictor.cell_view`).
    """

    cam: np.ndarray
    raw: np.ndarray
    class_index: int
    class_name: str
    predicted_index: int
    predicted_name: str
    probability: float
    class_probability: float
    image: Optional[np.ndarray] = None


def _as_rgb(image: ImageLike, i: int) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return fileio.check_rgb(image, f"image {i}")
    return fileio.read_rgb(image)


class GradCAM:
    """Grad-CAM for a wbc_nnabla ResNet model, loaded once and reused.

    model: path of a ``.nnp`` written by :func:`wbc_nnabla.modelfile.save_nnp`
        (architecture, class names and input size come from its metadata) or of
        an ``.h5`` parameter file; read by :func:`wbc_nnabla.modelfile.read_model`
        (which says what it assumes for files without a description and raises
        :class:`~wbc_nnabla.modelfile.ModelError` for a bad file).
    size: network input size in pixels (images are resized to ``size x size``
        by :func:`wbc_nnabla.predictor.preprocess`, as for predictions);
        default: the model's ``input_size`` (required for a model that stores none).
    batch_size: images per forward/backward pass.
    """

    def __init__(self, model: Union[str, Path], size: Optional[int] = None, batch_size: int = 8):
        self.path = Path(model)
        params, meta = read_model(self.path)
        self.meta = meta
        self.arch = meta.arch
        self.num_classes = meta.num_classes
        self.class_names: Tuple[str, ...] = tuple(meta.class_names)
        self.size = network_size(meta, size, self.path)
        if batch_size < 1:
            raise InputError(f"batch_size {batch_size}: expected >= 1")
        self.batch_size = int(batch_size)
        # Fixed parameters in a private dict; _graph's no_grad makes the parametric
        # functions return need_grad=False views, so backward stops at the features
        # and never computes parameter gradients.
        self._scope = models.private_scope(params)
        self._graphs: Dict[int, tuple] = {}
        # a model adapt made sees every crop re-framed (and standardised): explain what it sees
        self._view = cell_view(meta) or (lambda rgb: rgb)

    # ------------------------------------------------------------------ classes

    def class_index(self, name: Union[str, int]) -> int:
        """Index in the model's classes of ``name``: the model's own class name or any
        spelling :func:`classes.category` accepts (case-insensitive), or an index.

        A sub-category maps to its reporting class when the model does not have
        it (``Lymph small`` -> ``Lymph``; ``Band`` -> ``Neutrophil`` for a
        five-class model). Raises :class:`~wbc_nnabla.classes.LabelError` naming
        the model's classes when there is no match.
        """
        if isinstance(name, (int, np.integer)):
            if not 0 <= int(name) < self.num_classes:
                raise classes.LabelError(f"class index {name} out of range 0-{self.num_classes - 1}")
            return int(name)
        exact = [i for i, m in enumerate(self.class_names) if m.casefold() == str(name).strip().casefold()]
        if exact:  # the model's own spelling, even outside the taxonomy
            return exact[0]
        try:
            cat = classes.category(name)
        except classes.LabelError as e:
            raise classes.LabelError(f"{e}; this model's classes are {', '.join(self.class_names)}") from None
        keys = {}
        for i, m in enumerate(self.class_names):
            keys.setdefault(m.casefold(), i)
            try:
                keys.setdefault(classes.category(m).name.casefold(), i)
            except classes.LabelError:  # a custom class name outside the taxonomy
                pass
        for candidate in (cat.name, cat.class6, cat.class5):
            if candidate and candidate.casefold() in keys:
                return keys[candidate.casefold()]
        raise classes.LabelError(f"class {name!r} is not one of the model's classes "
                                 f"({', '.join(self.class_names)}) of {self.path}")

    # ------------------------------------------------------------------ graph

    def _graph(self, n: int):
        """(x, logits, features) for a batch of ``n``; built once per batch size."""
        if n not in self._graphs:
            with nn.parameter_scope("", self._scope), nn.no_grad():
                x = nn.Variable(models.input_shape(n, self.size))
                logits, feats = models.resnet_features(x, self.arch, self.num_classes, test=True,
                                                       norm=self.meta.norm)
            # Gradients are wanted at the layer4 output only: backward starts at
            # the logits and stops here (parameters and x do not need gradients).
            feats.need_grad = True
            self._graphs[n] = (x, logits, feats)
        return self._graphs[n]

    def _batch(self, rgbs: Sequence[np.ndarray], target: Optional[int]) -> List[CamResult]:
        from scipy.special import softmax

        x, logits, feats = self._graph(len(rgbs))
        x.d = np.stack([preprocess(r, self.size) for r in rgbs])
        # No buffer clearing here: on a graph's first forward nnabla has not yet
        # propagated the need_grad set on `feats` above, and clear_no_need_grad
        # released the layer4 activations (garbage maps on the first call).
        logits.forward()
        scores = logits.d.copy()
        probs = softmax(scores, axis=1)
        pred = scores.argmax(axis=1)
        used = pred if target is None else np.full(len(rgbs), target)
        activations = feats.d.copy()                                   # (N, K, h, w)
        onehot = np.zeros(scores.shape, np.float32)
        onehot[np.arange(len(rgbs)), used] = 1.0                       # d(sum_n score_{n,c_n})
        feats.grad.zero()
        logits.backward(grad=onehot, clear_buffer=True)
        alpha = feats.g.mean(axis=(2, 3))                              # (N, K)
        raw = np.maximum(np.einsum("nk,nkhw->nhw", alpha, activations), 0.0).astype(np.float32)
        out = []
        for i, rgb in enumerate(rgbs):
            out.append(CamResult(
                cam=upsample_map(raw[i], rgb.shape[:2], self.size), raw=raw[i],
                class_index=int(used[i]), class_name=self.class_names[used[i]],
                predicted_index=int(pred[i]), predicted_name=self.class_names[pred[i]],
                probability=float(probs[i, pred[i]]), class_probability=float(probs[i, used[i]]), image=rgb))
        return out

    # ------------------------------------------------------------------ API

    def explain(self, images: Sequence[ImageLike], class_name: Union[str, int, None] = None,
                progress: bool = False) -> List[CamResult]:
        """Grad-CAM of each image, for ``class_name`` or (default) the predicted class.

        images: RGB uint8 ``(H, W, 3)`` arrays and/or image paths, any sizes.

        Returns one :class:`CamResult` per image, in order; each ``cam`` has the
        ``(H, W)`` of its ``image``: the input, or what a model ``adapt`` made sees of it.
        """
        target = None if class_name is None else self.class_index(class_name)
        images = list(images)
        chunks = range(0, len(images), self.batch_size)
        if progress:
            from tqdm import tqdm
            chunks = tqdm(chunks, desc="gradcam", unit="batch")
        out: List[CamResult] = []
        for s in chunks:
            rgbs = [self._view(_as_rgb(im, s + j)) for j, im in enumerate(images[s:s + self.batch_size])]
            out.extend(self._batch(rgbs, target))
        return out


#: Total stride of the ResNets of :mod:`wbc_nnabla.models`: conv1, the max-pool and
#: the first blocks of layer2-4 each halve the grid, with "same" padding.
STRIDE = 32


def upsample_map(raw: np.ndarray, shape: Tuple[int, int], size: int) -> np.ndarray:
    """An ``(h, w)`` layer4 map resampled onto an image of ``shape`` = (H, W), divided by its maximum.

    ``size``: the network input size the image was resized to. Layer4 cell
    ``(i, j)`` is centred on network-input pixel ``(32 i, 32 j)`` (each stride-2
    layer maps output ``j`` to input ``2 j``; measured with input gradients in
    tests), not on the middle of a 32-pixel block as a plain ``cv2.resize``
    would place it, which would shift the map by half a cell (16 px of the
    network input; 37 px of a 750-px crop inferred at 320). So the map is
    placed with an affine warp (bilinear between cell centres, edge cells
    extended to the border).
    """
    h_img, w_img = int(shape[0]), int(shape[1])
    sy, sx = h_img / size, w_img / size                     # image pixels per network-input pixel
    # network-input index p lies at image index (p + 0.5) * s - 0.5 (cv2.resize's pixel-centre rule)
    m = np.float32([[STRIDE * sx, 0.0, 0.5 * sx - 0.5],
                    [0.0, STRIDE * sy, 0.5 * sy - 0.5]])
    cam = cv2.warpAffine(raw.astype(np.float32), m, (w_img, h_img), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    cam = np.maximum(cam, 0.0)
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


def gradcam(model: Union[str, Path], images: Sequence[ImageLike], class_name: Union[str, int, None] = None,
            size: Optional[int] = None, batch_size: int = 8) -> List[np.ndarray]:
    """Grad-CAM maps (float32 ``(H, W)`` in [0, 1], one per image) of a model file.

    A one-call form of :class:`GradCAM` (which also gives the predicted class
    and probabilities); see it for the arguments.
    """
    return [r.cam for r in GradCAM(model, size=size, batch_size=batch_size).explain(images, class_name)]


def peak(cam: np.ndarray, level: float = 0.9) -> Tuple[float, float]:
    """Where a map points: centroid ``(y, x)`` in pixels of the region ``cam >= level * max``.

    A centroid rather than ``argmax``: a bilinearly upsampled coarse map has
    flat maxima whose first pixel sits at a corner of the region.
    """
    top = float(cam.max())
    if top <= 0:
        raise InputError("the map is all zeros: no region supports the class")
    ys, xs = np.nonzero(cam >= level * top)
    return float(ys.mean()), float(xs.mean())


# ----------------------------------------------------------------------------- pictures


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.4,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """The map as a heat map over the image: RGB uint8 ``(H, W, 3)``.

    rgb: RGB uint8 ``(H, W, 3)``.
    cam: ``(H, W)`` in [0, 1] (e.g. ``CamResult.cam``).
    alpha: weight of the heat map (0 = image only, 1 = heat map only).
    colormap: an OpenCV colormap (JET: blue = 0, red = 1).
    """
    fileio.check_rgb(rgb, "overlay")
    if cam.shape != rgb.shape[:2]:
        raise InputError(f"overlay: map shape {cam.shape} differs from the image's {rgb.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay: alpha {alpha} outside [0, 1]")
    heat = cv2.applyColorMap(np.clip(np.round(cam * 255.0), 0, 255).astype(np.uint8), colormap)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(rgb, 1.0 - alpha, heat, alpha, 0.0)


def figure(rgbs: Sequence[np.ndarray], cams: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None,
           ncols: int = 4, alpha: float = 0.4, tile_inches: float = 2.5):
    """A grid of overlays as a matplotlib :class:`~matplotlib.figure.Figure` (no pyplot state).

    rgbs: images (as many as ``cams``).
    cams: their maps (as many as ``rgbs``).
    titles: one per image (e.g. ``"Band 0.93"``).

    Save with :func:`save_figure` or embed in a report.
    """
    from matplotlib.figure import Figure

    if len(rgbs) != len(cams) or (titles is not None and len(titles) != len(rgbs)):
        raise InputError("figure: rgbs, cams and titles must have the same length")
    if not rgbs:
        raise InputError("figure: no images")
    ncols = max(1, min(ncols, len(rgbs)))
    nrows = -(-len(rgbs) // ncols)
    fig = Figure(figsize=(tile_inches * ncols, tile_inches * nrows + 0.3 * nrows))
    for i, (rgb, cam) in enumerate(zip(rgbs, cams)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(overlay(rgb, cam, alpha))
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Union[str, Path], dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    with outputs.atomic_path(path) as tmp:
        fig.savefig(str(tmp), dpi=dpi, format=path.suffix.lstrip(".") or "png")
    return path


# ----------------------------------------------------------------------------- writing overlays


def output_stems(paths: Sequence[Union[str, Path]]) -> List[str]:
    """Output name stems of images: the file stem; prefixed by its folder (then numbered) when stems collide.

    ``a/x.png, b/x.png, c/y.png`` -> ``a_x, b_x, y``; a stem still taken gets ``_2``, ``_3``...
    """
    from collections import Counter
    paths = [Path(p) for p in paths]
    counts = Counter(p.stem for p in paths)
    stems = [p.stem if counts[p.stem] == 1 else f"{p.parent.name}_{p.stem}" for p in paths]
    seen: dict = {}
    unique = []
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
        unique.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return unique


def _picture(rgb: np.ndarray, cam: np.ndarray, alpha: float, side_by_side: bool, min_side: int) -> np.ndarray:
    """The overlay written for one image (see :func:`write_overlays`)."""
    if rgb.shape[0] < min_side:  # small crops (e.g. the demo's 48 px) are enlarged for viewing
        rgb, cam = fileio.resize_square(rgb, min_side), fileio.resize_square(cam, min_side)
    picture = overlay(rgb, cam, alpha)
    return np.hstack([rgb, picture]) if side_by_side else picture


def write_overlays(explainer: Union["GradCAM", str, Path], images: Sequence[Union[str, Path]], folder,
                   class_name: Union[str, int, None] = None, alpha: float = 0.4,
                   stems: Optional[Sequence[str]] = None, side_by_side: bool = False, min_side: int = 0,
                   cams: bool = True, progress: bool = False) -> List[dict]:
    """Grad-CAM of image files written into ``folder``, one file per image (each written atomically).

    explainer: a :class:`GradCAM`, or a model path to build one (its input size and batch size).
    images: image files; read and explained ``explainer.batch_size`` at a time.
    folder: the output folder.
    class_name: the class explained (any spelling :meth:`GradCAM.class_index` takes);
        default: each image's predicted class.
    alpha: weight of the heat map (:func:`overlay`).
    stems: output name stems, one per image; default :func:`output_stems`.
    side_by_side: write the image and its overlay side by side (``(H, 2W, 3)``)
        instead of the overlay alone.
    min_side: an image less than ``min_side`` pixels high is first resized to
        ``min_side`` x ``min_side`` (:func:`wbc_nnabla.fileio.resize_square`, map too).
    cams: also write ``<stem>_cam.npy``: the map, float32 ``(H, W)`` in [0, 1] at the image's size.

    Writes ``<stem>_gradcam.png``: the heat map over the image (:func:`overlay`) at the
    image's size, or (``side_by_side``) the image and its overlay side by side.
    Returns one record per image, in order: ``path`` (the image, absolute),
    ``overlay`` and (with ``cams``) ``cam`` (file names in ``folder``),
    ``predicted``, ``probability`` (top class and its softmax probability,
    6 decimals), ``class`` and ``class_probability`` (the class explained).
    """
    from tqdm import tqdm

    g = explainer if isinstance(explainer, GradCAM) else GradCAM(explainer)
    paths = [Path(p) for p in images]
    stems = output_stems(paths) if stems is None else list(stems)
    if len(stems) != len(paths):
        raise InputError(f"write_overlays: {len(stems)} stems for {len(paths)} images")
    folder = Path(folder)
    records = []
    for s in tqdm(range(0, len(paths), g.batch_size), desc="gradcam", unit="batch",
                  disable=outputs.bar_disabled(progress)):
        chunk = paths[s:s + g.batch_size]
        rgbs = [fileio.read_rgb(p) for p in chunk]
        for p, stem, r in zip(chunk, stems[s:], g.explain(rgbs, class_name)):
            fileio.write_image(folder / f"{stem}_gradcam.png", _picture(r.image, r.cam, alpha, side_by_side, min_side))
            record = dict(path=str(p.resolve()), overlay=f"{stem}_gradcam.png")
            if cams:
                with outputs.atomic_path(folder / f"{stem}_cam.npy") as tmp, open(tmp, "wb") as f:
                    np.save(f, r.cam)
                record["cam"] = f"{stem}_cam.npy"
            records.append(dict(record, predicted=r.predicted_name, probability=round(r.probability, 6),
                                **{"class": r.class_name}, class_probability=round(r.class_probability, 6)))
    return records


def write_gradcam(model: Union[str, Path], images: Sequence[Union[str, Path]], out,
                  class_name: Optional[str] = None, size: Optional[int] = None, batch_size: int = 8,
                  alpha: float = 0.4, overwrite: bool = False, progress: bool = False):
    """Grad-CAM of image files into the folder ``out`` (``wbc-nnabla gradcam``).

    model: model file (read by :class:`GradCAM`).
    images: image files and/or folders (their images directly inside,
        :func:`wbc_nnabla.fileio.image_files` with ``recursive=False``).
    out: output folder, never inside an image's folder; written whole in one
        rename (:func:`wbc_nnabla.outputs.atomic_dir`, with the ``gradcam`` marker). An
        existing folder is replaced only with ``overwrite`` and when it is empty
        or an earlier ``gradcam`` output (:func:`wbc_nnabla.outputs.check_output_folder`).
    class_name: see :func:`write_overlays`.
    size: see :class:`GradCAM`.
    batch_size: see :class:`GradCAM`.
    alpha: see :func:`write_overlays`.

    Writes :func:`write_overlays`' files (overlay at the image's size and the
    map ``.npy``; stems from :func:`output_stems`), ``gradcam.csv`` (its
    records) and ``gradcam.json`` (the settings and the environment). Returns
    the ``gradcam.csv`` table; ``attrs["size"]`` is the network input size used.
    """
    import pandas as pd

    out = Path(out)
    paths = fileio.image_files(images, recursive=False)
    outputs.check_not_inside(out, [p.parent for p in paths])
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha {alpha}: expected a weight between 0 and 1")
    g = GradCAM(model, size=size, batch_size=batch_size)
    target = None if class_name is None else g.class_index(class_name)
    replace = outputs.check_output_folder(out, "gradcam", overwrite, [Path(model)] + paths)
    with outputs.atomic_dir(out, overwrite=replace, command="gradcam") as folder:
        table = pd.DataFrame(write_overlays(g, paths, folder, target, alpha, progress=progress))
        with outputs.atomic_path(folder / "gradcam.csv") as tmp:
            table.to_csv(tmp, index=False)
        outputs.write_json(folder / "gradcam.json", dict(
            command="gradcam", model=str(Path(model).resolve()), arch=g.arch, class_names=list(g.class_names),
            size=g.size, layer="layer4 output (last convolutional stage)", batchnorm="test mode (running statistics)",
            **{"class": class_name}, alpha=alpha, batch_size=g.batch_size, images=len(paths),
            environment=outputs.environment()))
    table.attrs["size"] = g.size
    return table
