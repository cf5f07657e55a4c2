"""The pixel limit (issue 49, root cause 2): an image's size is read from its header and checked
before it is decoded; the limit is :data:`wbc_nnabla.images.MAX_IMAGE_PIXELS`, adjustable by
``$WBC_NNABLA_MAX_PIXELS``."""
import zlib

import cv2
import numpy as np
import pytest

from wbc_nnabla import cli, fileio, images
from wbc_nnabla.errors import InputError


def _png_header(width, height, rows=1) -> bytes:
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\x00" * ((3 * width + 1) * rows), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_30000_pixel_square_png_is_refused_from_its_header(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(_png_header(30000, 30000))
    with pytest.raises(fileio.ImageReadError, match=r"huge\.png: image too large .*not decoded"):
        fileio.read_rgb(p)


def test_the_limit_is_adjustable_by_the_environment(tmp_path, monkeypatch):
    p = tmp_path / "cell.png"
    cv2.imwrite(str(p), np.full((200, 300, 3), 220, np.uint8))
    assert fileio.read_rgb(p).shape == (200, 300, 3)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "50000")
    assert images.max_image_pixels() == 50000
    with pytest.raises(fileio.ImageReadError, match=r"cell\.png: image too large \(300x200 = 60,000 pixels"):
        fileio.read_rgb(p)
    jpg = tmp_path / "cell.jpg"
    cv2.imwrite(str(jpg), np.full((200, 300, 3), 220, np.uint8))
    with pytest.raises(fileio.ImageReadError, match="cell.jpg: image too large"):
        fileio.read_rgb(jpg)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "a lot")
    with pytest.raises(InputError, match="WBC_NNABLA_MAX_PIXELS='a lot'"):
        fileio.read_rgb(p)


def test_a_huge_header_in_a_command_is_one_line(tmp_path, capsys):
    p = tmp_path / "fields" / "huge.png"
    p.parent.mkdir()
    p.write_bytes(_png_header(30000, 30000))
    assert cli.main(["locate", str(p.parent), "--out", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huge.png: image too large" in err[0]
    assert not (tmp_path / "c.csv").exists()
