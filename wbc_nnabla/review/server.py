"""The review page's web server: a Flask app over one review database, for one local user.

Flask (a maintained WSGI micro-framework, no build step) serves the page (plain HTML, CSS and
JavaScript shipped in the package: no CDN, it works offline) and a small JSON API; werkzeug's
threaded development server runs it (a local single-user tool; see ``docs/review.md``).

Security (``docs/review.md``, "Security"): the server binds 127.0.0.1 unless told otherwise;
every request must carry the per-run token (the ``X-Review-Token`` header; a GET may carry it as
``?token=`` or in the cookie the page sets), else 403; a POST must carry the header (a cookie alone
cannot, so another site cannot post for the user); images are served by cell id, never by a path
from the client; every posted value is checked against the taxonomy (else 400, nothing stored).

Routes: ``GET /`` the page; ``GET /api/smears``; ``GET /api/smears/<id>``; ``POST
/api/smears/<id>/decide`` ``{cells, decision, reviewer}``; ``POST .../undo``, ``.../sign``
``{reviewer}``; ``POST .../reopen`` ``{reviewer, note}``; ``GET /api/smears/<id>/audit``;
``GET /api/cells/<id>/image``, ``.../thumb``, ``.../gradcam``.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import cv2
from flask import Flask, Response, abort, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .. import fileio
from ..classes import CLASSES6
from .db import UNUSABLE, Conflict, NotFound, ReviewDB, ReviewError
from .labels import live_differential

HERE = Path(__file__).resolve().parent
#: Longest side of a thumbnail in pixels (JPEG), and of the large view (PNG; 0 = as the image is).
THUMB_SIDE = 96
#: Largest request body accepted (bytes): a decision on every cell of a 2,000-cell smear fits.
MAX_BODY = 256 * 1024
#: Key of each class on the page (Table 1 order), the confirm / unusable / group / undo keys.
KEYS = {"classes": {str(i + 1): c for i, c in enumerate(CLASSES6)}, "confirm": "Enter", "unusable": "0",
        "group": "g", "undo": "u", "cam": "c"}

CamFunction = Callable[[str, str], bytes]


def is_loopback(host: str) -> bool:
    """True for an address or name that only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cookie_name(token: str) -> str:
    """The token cookie's name, distinct per run (two reviews on one machine do not clash)."""
    return "wbc_review_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def encode_image(path: str, max_side: int, ext: str) -> bytes:
    """The image at ``path`` (any format :func:`wbc_nnabla.fileio.read_rgb` reads), shrunk to ``max_side``
    (0: as it is) and encoded as ``ext`` (``.jpg`` or ``.png``); browsers show neither BMP nor TIFF alike."""
    try:
        rgb = fileio.read_rgb(path)
    except FileNotFoundError:
        raise NotFound(f"{path}: image not found (moved or deleted since the review began?)") from None
    except (OSError, ValueError) as e:
        raise NotFound(f"{path}: image not readable ({e})") from None
    h, w = rgb.shape[:2]
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_JPEG_QUALITY, 85] if ext == ".jpg" else []
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise NotFound(f"{path}: image could not be encoded")
    return buf.tobytes()


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ReviewError("expected a JSON object (Content-Type: application/json)")
    return body


def _check_token(token: str) -> None:
    """403 unless the request carries the token (header; for a GET also the query or the page's cookie)."""
    given = request.headers.get("X-Review-Token")
    if given is None and request.method in ("GET", "HEAD"):
        given = request.args.get("token") or request.cookies.get(cookie_name(token))
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        abort(403)


def smear_summary(state: dict) -> dict:
    """What the page updates after an action: counts, the live differential, undo and sign state.

    state: :meth:`ReviewDB.smear` (with ``cells``) or :meth:`ReviewDB.tally` (with ``counts``).
    """
    if "cells" in state:
        rows = [(c["ai"], c["decision"], c["pending"]) for c in state["cells"]]
    else:
        rows = [(ai, d, p) for ai, d, p, n in state["counts"] for _ in range(n)]
    return {"id": state["id"], "name": state["name"], "signed_by": state["signed_by"],
            "signed_at": state["signed_at"], "can_undo": state["can_undo"],
            "pending": sum(1 for _, d, p in rows if p and d is None),
            "differential": live_differential([r[0] for r in rows], [r[1] for r in rows])}


def create_app(review: ReviewDB, token: str, reviewer: str, ranks: Optional[Dict[int, int]] = None,
               order: str = "ai", cam: Optional[CamFunction] = None) -> Flask:
    """The review app over ``review``.

    token: the per-run secret every request must carry. reviewer: the default reviewer name.
    ranks: ``{cell_id: rank}`` of an ``active`` / ``random`` order (None: the AI's groups).
    cam: ``cam(image_path, class_name) -> PNG bytes`` (Grad-CAM), built by the command line from a
    model; None: no Grad-CAM (the route answers 404).
    """
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, JSON_SORT_KEYS=False)
    _add_guards(app, token)

    @app.get("/")
    def index():
        page = render_template("index.html", token=token, reviewer=reviewer, order=order, keys=KEYS,
                               classes=list(CLASSES6), unusable=UNUSABLE, has_cam=cam is not None)
        resp = Response(page, mimetype="text/html")
        resp.headers["Cache-Control"] = "no-store"
        if request.args.get("token"):
            resp.set_cookie(cookie_name(token), token, httponly=True, samesite="Strict")
        return resp

    _add_smear_routes(app, review, reviewer, ranks, order)
    _add_image_routes(app, review, cam)
    return app


def _add_guards(app: Flask, token: str) -> None:
    """The token check before every request, and JSON errors (400 / 404 / 409 for a review error)."""
    @app.before_request
    def _token():
        g.started = time.perf_counter()
        _check_token(token)

    @app.after_request
    def _timing(resp):
        # the server's own time per request (the page records it beside the round trip)
        if "started" in g:
            resp.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - g.started):.1f}"
        return resp

    @app.errorhandler(ReviewError)
    def _review_error(e):
        status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, Conflict) else 400
        return jsonify(error=str(e)), status

    @app.errorhandler(HTTPException)
    def _http_error(e):
        return jsonify(error=f"{e.code} {e.name}"), e.code


def _add_smear_routes(app: Flask, review: ReviewDB, reviewer: str, ranks: Optional[Dict[int, int]],
                      order: str) -> None:
    """The smear list, one smear, its audit trail, and the four actions (each one transaction)."""
    @app.get("/api/smears")
    def smears():
        return jsonify(smears=review.smears(), predictions=review.meta().get("predictions"))

    @app.get("/api/smears/<int:sid>")
    def smear(sid: int):
        state = review.smear(sid)
        for c in state["cells"]:
            c["rank"] = ranks.get(c["id"]) if ranks else None
        return jsonify(dict(smear_summary(state), cells=state["cells"], order=order))

    @app.get("/api/smears/<int:sid>/audit")
    def audit(sid: int):
        return jsonify(audit=review.audit(review.smear(sid)["name"]))

    def after(sid: int, result: dict):
        return jsonify(dict(result, smear=smear_summary(review.tally(sid))))

    @app.post("/api/smears/<int:sid>/decide")
    def decide(sid: int):
        body = _json_body()
        return after(sid, review.decide(sid, body.get("cells"), body.get("decision"), body.get("reviewer", reviewer)))

    @app.post("/api/smears/<int:sid>/undo")
    def undo(sid: int):
        return after(sid, review.undo(sid, _json_body().get("reviewer", reviewer)))

    @app.post("/api/smears/<int:sid>/sign")
    def sign(sid: int):
        return after(sid, review.sign(sid, _json_body().get("reviewer", reviewer)))

    @app.post("/api/smears/<int:sid>/reopen")
    def reopen(sid: int):
        body = _json_body()
        return after(sid, review.reopen(sid, body.get("reviewer", reviewer), body.get("note", "")))


def _add_image_routes(app: Flask, review: ReviewDB, cam: Optional[CamFunction]) -> None:
    """Thumbnails (JPEG, cached), the large view (PNG) and Grad-CAM, each by cell id."""
    cam_lock = threading.Lock()

    @functools.lru_cache(maxsize=4096)
    def thumb(cid: int) -> bytes:
        return encode_image(review.cell_path(cid), THUMB_SIDE, ".jpg")

    def image(data: bytes, mimetype: str) -> Response:
        resp = Response(data, mimetype=mimetype)
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    @app.get("/api/cells/<int:cid>/thumb")
    def cell_thumb(cid: int):
        return image(thumb(cid), "image/jpeg")

    @app.get("/api/cells/<int:cid>/image")
    def cell_image(cid: int):
        return image(encode_image(review.cell_path(cid), 0, ".png"), "image/png")

    @app.get("/api/cells/<int:cid>/gradcam")
    def cell_gradcam(cid: int):
        if cam is None:
            raise NotFound("no Grad-CAM: start the review with --model MODEL.nnp")
        cell = review.cell(cid)
        with cam_lock:          # nnabla graphs are not to be run from two threads at once
            return image(cam(cell["path"], cell["ai"]), "image/png")


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 0):
    """A threaded werkzeug server for ``app`` (port 0: a free one; ``server.server_port`` tells which)."""
    from werkzeug.serving import make_server as _make
    return _make(host, port, app, threaded=True)


def page_url(server, token: str) -> str:
    """The address to open, with the token (as Jupyter prints it)."""
    host = server.host if ":" not in server.host else f"[{server.host}]"
    return f"http://{host}:{server.server_port}/?token={token}"

