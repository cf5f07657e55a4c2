"""Image files: reading any cell or field photo as RGB uint8 (bounded, checked), writing, listing.

* :func:`read_rgb` is the one reader of every command: BMP, PNG, JPEG or TIFF; grey, RGBA and
  16-bit converted to RGB ``uint8`` ``(H, W, 3)``. It never returns a half-decoded or empty
  image, never decodes an image larger than :func:`max_image_pixels` (checked from the header,
  before decoding) and refuses a frame with no bright slide background
  (:class:`NoBackgroundError`: blank, unlit, very dark, single-colour). Each refusal is an
  :class:`ImageReadError` naming the file, which ``--skip-bad`` skips.
* :func:`write_image` writes atomically (:mod:`~wbc_nnabla.outputs`).
* :func:`image_files`, :func:`list_images`: the image files of folders.

Split from :mod:`~wbc_nnabla.fileio` (cell sources and NNC CSVs), which re-exports every name
here. docs/formats.md, "Images".
"""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from . import outputs
from .errors import InputError, PathLike, SourceError, WBCError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageReadError(WBCError, OSError):
    """A bad image file: missing, empty, truncated, corrupt, not an image, too small or too large,
    or without a bright background (:class:`NoBackgroundError`). ``--skip-bad`` skips these."""


class NoBackgroundError(ImageReadError):
    """An image without two sides, a bright slide background and darker stained objects: a blank,
    unlit, very dark or single-colour frame (:func:`check_background`), or a colour-inverted one in
    which no WBC stands on a background (:mod:`~wbc_nnabla.segmentation`). A bad image like a
    corrupt one. Raised on an array, the message starts ``no two sides``; a caller that knows
    the file puts its name first."""


def naming(error: WBCError, name) -> WBCError:
    """``error`` with the file ``name`` first in its message: the same error when it names it already,
    else a new one of its class (raise it ``from None``). For errors raised on arrays (no file known)."""
    text = str(error)
    return error if text.startswith(f"{name}:") else type(error)(f"{name}: {text}")


def _jpeg_is_complete(data: np.ndarray) -> bool:
    # OpenCV decodes a truncated JPEG into a grey-filled image with only a
    # warning on stderr, so a missing end-of-image marker (FF D9) is checked here.
    tail = data[-4096:].tobytes()
    return b"\xff\xd9" in tail


def to_rgb_uint8(image: np.ndarray, name: str = "<array>") -> np.ndarray:
    """Convert an OpenCV-decoded array (BGR/BGRA/gray, 8/16-bit or float) to RGB uint8.

    image: ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA.
    16-bit values are scaled by 1/257 and floats in [0, 1] by 255; an alpha
    channel is dropped (microscope images carry no meaningful transparency).
    """
    if image.dtype == np.uint16:
        image = np.round(image.astype(np.float32) / 257.0).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{name}: unsupported pixel type {image.dtype} (expected 8- or 16-bit)")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ImageReadError(f"{name}: unsupported image shape {image.shape}")


def check_rgb(rgb, what: str = "") -> np.ndarray:
    """``rgb`` itself if it is an RGB uint8 array ``(H, W, 3)``, else ValueError (prefixed ``what: ``)."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"{what + ': ' if what else ''}expected an RGB uint8 image (H, W, 3), got "
                         f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}")
    return rgb


#: Smallest image side (pixels) accepted as a cell image: a 1x1 "cell" would become a
#: one-pixel crop and still get a confident prediction. docs/formats.md, "Images".
MIN_IMAGE_SIDE = 16

# libjpeg reports damaged entropy-coded data (e.g. a cut file with its end marker
# put back) only as a warning printed on the C stderr, then fills the rest grey;
# OpenCV passes no flag back. The warning texts of libjpeg/libjpeg-turbo's jerror.h:
_JPEG_CORRUPT_WARNINGS = (b"Corrupt JPEG data", b"Premature end of JPEG file", b"Invalid SOS parameters")
_STDERR_LOCK = threading.Lock()


def _decode_jpeg(data: np.ndarray, name: str) -> Optional[np.ndarray]:
    """``cv2.imdecode`` of JPEG bytes with libjpeg's warnings caught from file descriptor 2.

    No maintained Python API reports libjpeg's corrupt-data warnings, so stderr is
    redirected to a temporary file around the decode (under a lock: the descriptor
    is process-wide); anything else printed meanwhile is passed on to stderr.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        text = caught.read()
    warning = next((w for w in _JPEG_CORRUPT_WARNINGS if w in text), None)
    other = b"".join(line for line in text.splitlines(keepends=True)
                     if not any(w in line for w in _JPEG_CORRUPT_WARNINGS))
    if other:
        os.write(2, other)
    if warning is not None:
        detail = next(line for line in text.splitlines() if warning in line).decode("utf-8", "replace").strip()
        raise ImageReadError(f"{name}: corrupt JPEG data (libjpeg: {detail}); the decoded image "
                             f"would be partly blank")
    return image


#: Most pixels (width x height) an image may have. Checked from the file's header before it is
#: decoded (:func:`image_size`): a 30000x30000 PNG of 2.6 MB would otherwise take 2.7 GB to decode
#: and 5.5 GB to convert. 50 MP holds a 8192x6144 photo, 10x the paper's 2560x1920 fields.
#: Adjustable per run by the environment variable :data:`MAX_PIXELS_ENV`. docs/formats.md, "Images".
MAX_IMAGE_PIXELS = 50_000_000
#: Environment variable that overrides :data:`MAX_IMAGE_PIXELS` (a whole number of pixels).
MAX_PIXELS_ENV = "WBC_NNABLA_MAX_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit in force: ``$WBC_NNABLA_MAX_PIXELS`` when set, else :data:`MAX_IMAGE_PIXELS`.

    A value that is not a whole number >= 1 is an :class:`~wbc_nnabla.errors.InputError` naming it.
    """
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value.replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise InputError(f"{MAX_PIXELS_ENV}={value!r}: expected a whole number of pixels >= 1")
    return limit


def image_size(data: bytes) -> Optional[Tuple[int, int]]:
    """``(width, height)`` in pixels from an image file's header, without decoding its pixels.

    data: the file's bytes. Pillow reads the header only (``Image.open`` is lazy; OpenCV has no
    header-only call). Returns None when Pillow cannot parse the header (the decoder then names
    the problem), and ``(-1, -1)`` for an image over Pillow's own decompression-bomb limit
    (``2 * PIL.Image.MAX_IMAGE_PIXELS``), whose size Pillow does not give.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return int(im.size[0]), int(im.size[1])
        except Image.DecompressionBombError:
            return -1, -1
        except Exception:    # any header Pillow cannot parse: OpenCV decides (and names the problem)
            return None


def _check_pixels(data: bytes, name: str) -> None:
    """:class:`ImageReadError` naming ``name`` when the header gives more than :func:`max_image_pixels`."""
    size = image_size(data)
    limit = max_image_pixels()
    if size is None:
        return
    if size == (-1, -1):
        over = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        if over and limit < over:
            raise ImageReadError(f"{name}: image too large (more than {over:,} pixels by its header; the limit "
                                 f"is {limit:,}, ${MAX_PIXELS_ENV}); not decoded")
        return
    w, h = size
    if w * h > limit:
        raise ImageReadError(f"{name}: image too large ({w}x{h} = {w * h:,} pixels by its header; the limit is "
                             f"{limit:,} pixels, raise it with ${MAX_PIXELS_ENV}); not decoded")


#: Least green level (0-255) of the slide background (:func:`background_rgb`) of a bright-field
#: photo. MGG stains absorb green, and the stain density is measured against the background's
#: green (:func:`wbc_nnabla.segmentation.darkness`); a frame whose brightest fifth is darker than
#: this has no slide background to measure against. Real cells: 199-255 (pbc6, Zheng d1,
#: BCCD; 3,164 images); the same cells at 5 % exposure: 9-12. docs/formats.md, "Images".
MIN_BACKGROUND = 64
#: Side (pixels) the image is area-reduced to before :func:`check_background` (speed only).
BACKGROUND_SIDE = 128


def background_rgb(rgb: np.ndarray) -> np.ndarray:
    """Slide background colour (float32 (3,)): median of the brightest 20% of pixels."""
    f = rgb.reshape(-1, 3).astype(np.float32)
    lum = f.sum(1)
    return np.median(f[lum >= np.percentile(lum, 80)], axis=0)


def check_background(rgb: np.ndarray, name: str = "", min_level: float = MIN_BACKGROUND) -> np.ndarray:
    """``rgb`` (RGB uint8 ``(H, W, 3)``), or :class:`NoBackgroundError` when it has no bright background.

    The green of :func:`background_rgb` (on a copy area-reduced to :data:`BACKGROUND_SIDE` px)
    must reach ``min_level`` (:data:`MIN_BACKGROUND`). Refuses black, unlit and very dark frames
    and single-colour ones without green (red, blue, magenta), on which the stain density is
    undefined and GrabCut has no background sample. ``name``: the file, put first in the message.
    """
    h, w = rgb.shape[:2]
    f = min(1.0, BACKGROUND_SIDE / max(h, w))
    small = rgb if f >= 1.0 else cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))),
                                            interpolation=cv2.INTER_AREA)
    level = float(background_rgb(small)[1])
    if level < min_level:
        raise NoBackgroundError(f"{name + ': ' if name else ''}no two sides: no bright background (the brightest "
                                f"fifth of the pixels has green level {level:.0f} of 255, at least {min_level:g} "
                                f"expected of a bright-field smear photo): a blank, unlit, very dark or "
                                f"single-colour frame")
    return rgb


def read_rgb(path: PathLike, min_side: int = MIN_IMAGE_SIDE, min_background: float = MIN_BACKGROUND) -> np.ndarray:
    """Read an image file as RGB uint8 ``(H, W, 3)``, whatever it holds.

    Accepts BMP, PNG, JPEG and TIFF; grayscale, RGBA and 16-bit images are
    converted. Raises :class:`ImageReadError` naming the file when it is
    missing, empty, truncated, corrupt (libjpeg's corrupt-data warnings), not an
    image, larger than :func:`max_image_pixels` by its header (checked before
    decoding), smaller than ``min_side`` pixels on a side, or
    (:class:`NoBackgroundError`) darker than ``min_background`` where its slide
    background should be (:func:`check_background`; 0: not checked): never returns None.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: no such image file")
    data = np.fromfile(str(p), dtype=np.uint8)
    if data.size == 0:
        raise ImageReadError(f"{p}: empty file, expected an image")
    _check_pixels(data.tobytes(), str(p))
    if data[:2].tobytes() == b"\xff\xd8":
        if not _jpeg_is_complete(data):
            raise ImageReadError(f"{p}: truncated JPEG (no end-of-image marker)")
        image = _decode_jpeg(data, str(p))
    else:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageReadError(f"{p}: not a readable image (expected BMP, PNG, JPEG or TIFF)")
    if min(image.shape[:2]) < min_side:
        raise ImageReadError(f"{p}: image too small ({image.shape[1]}x{image.shape[0]} px; a cell image "
                             f"needs at least {min_side} px a side)")
    rgb = to_rgb_uint8(image, str(p))
    return check_background(rgb, str(p), min_background) if min_background else rgb


def write_image(path: PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB uint8 ``(H, W, 3)`` (or gray ``(H, W)``) image atomically; format from the suffix."""
    p = Path(path)
    arr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if p.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(p.suffix, arr, params)
    if not ok:
        raise OSError(f"{p}: OpenCV could not encode an image of shape {rgb.shape} as {p.suffix}")
    with outputs.atomic_path(p) as tmp:
        buf.tofile(str(tmp))


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an image to ``size`` x ``size`` pixels, the one rule every stage uses.

    ``cv2.INTER_AREA`` when shrinking (both sides larger than ``size``: no
    aliasing), else ``cv2.INTER_LINEAR``. The paper resizes its 750x750 crops to
    480 (training) and 320 (inference), section II.3. Returns a new array.
    """
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb.copy()
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (int(size), int(size)), interpolation=interp)


def is_image_file(path: PathLike) -> bool:
    """True for a file whose suffix is one of :data:`IMAGE_EXTENSIONS`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: PathLike) -> list:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_image_file(p))


def image_files(items: Iterable[PathLike], recursive: bool = True) -> List[Path]:
    """Image files named by ``items``: a file as given; a folder's images (searched recursively by default).

    What ``segment``, ``locate`` and ``gradcam`` read. Folders give their image
    files (:func:`is_image_file`) sorted by path; with ``recursive=False`` only
    those directly inside (:func:`list_images`). A missing path, or a folder
    holding no images, raises :class:`SourceError` naming it.
    """
    out: List[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = (sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q)) if recursive
                     else list_images(p))
            if not found:
                raise SourceError(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise SourceError(f"{p}: no such image file or folder")
    return out


def image_folders(items: Iterable[PathLike]) -> List[Path]:
    """The folders ``items`` (image files and/or folders) read from: a folder itself, a file's parent.

    What an output must not lie inside (:func:`check_not_inside`).
    """
    return [Path(p) if Path(p).is_dir() else Path(p).parent for p in items]



def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()

