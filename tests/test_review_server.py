"""The review server's rules through Flask's test client: the token, images by cell id only, every
posted value checked (else 400 and nothing stored), signing refused while cells are left."""
import cv2
import numpy as np
import pytest

from review_helpers import write_predictions
from wbc_nnabla.classes import CLASSES6
from wbc_nnabla.review import server
from wbc_nnabla.review.load import open_review

TOKEN = "test-token-123"


@pytest.fixture
def app_review(tmp_path):
    pred = write_predictions(tmp_path, per_class=3, smears=2)
    review = open_review(pred, pending_threshold=0.6)
    calls = []

    def cam(path, class_name):
        calls.append((path, class_name))
        ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
        return buf.tobytes()
    app = server.create_app(review, TOKEN, "tester", cam=cam)
    app.config["cam_calls"] = calls
    return app, review


def _auth(**extra):
    return dict({"X-Review-Token": TOKEN}, **extra)


def test_every_request_without_the_token_is_refused(app_review):
    app, _ = app_review
    client = app.test_client()
    for url in ("/", "/api/smears", "/api/smears/1", "/static/review.js", "/api/cells/1/thumb", "/no/such/page",
                "/api/cells/1/../../../etc/passwd"):
        assert client.get(url).status_code == 403, url
        assert client.get(url, headers={"X-Review-Token": "wrong"}).status_code == 403, url
    assert client.post("/api/smears/1/decide", json={"cells": [1], "decision": "Mono"}).status_code == 403
    assert app_review[1].audit() == []


def test_the_token_in_the_address_sets_a_cookie_that_serves_gets_but_never_posts(app_review):
    app, review = app_review
    client = app.test_client()
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and TOKEN in page.get_data(as_text=True)
    assert "httponly" in page.headers["Set-Cookie"].lower() and "samesite=strict" in page.headers["Set-Cookie"].lower()
    assert client.get("/api/smears").status_code == 200          # the cookie now
    assert client.get("/static/review.js").status_code == 200
    cid = review.smear(1)["cells"][0]["id"]
    assert client.post("/api/smears/1/decide", json={"cells": [cid], "decision": "Mono"}).status_code == 403
    assert client.post("/api/smears/1/decide", json={"cells": [cid], "decision": "Mono"},
                       headers=_auth()).status_code == 200
    assert [t["new"] for t in review.audit()] == ["Mono"]


def test_images_are_served_by_cell_id_only(app_review):
    app, review = app_review
    client = app.test_client()
    cid = review.smear(1)["cells"][0]["id"]
    thumb = client.get(f"/api/cells/{cid}/thumb", headers=_auth())
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert max(cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_COLOR).shape[:2]) == server.THUMB_SIDE
    full = client.get(f"/api/cells/{cid}/image", headers=_auth())
    assert full.status_code == 200 and full.data[:8] == b"\x89PNG\r\n\x1a\n"
    for url in ("/api/cells/999999/image", "/api/cells/../../../etc/passwd", "/api/cells/..%2F..%2Fetc%2Fpasswd/image",
                "/static/..%2f..%2fdb.py", "/static/../review/db.py", "/api/cells/-1/image",
                f"/api/cells/{review.cell_path(cid)}"):
        assert client.get(url, headers=_auth()).status_code == 404, url


def test_grad_cam_comes_from_the_injected_function_for_the_ai_class(app_review):
    app, review = app_review
    cell = review.smear(1)["cells"][0]
    got = app.test_client().get(f"/api/cells/{cell['id']}/gradcam", headers=_auth())
    assert got.status_code == 200 and got.mimetype == "image/png"
    assert app.config["cam_calls"] == [(review.cell_path(cell["id"]), cell["ai"])]
    plain = server.create_app(review, TOKEN, "tester").test_client()
    assert plain.get(f"/api/cells/{cell['id']}/gradcam", headers=_auth()).status_code == 404


@pytest.mark.parametrize("body", [
    {"cells": [1], "decision": "Monster"}, {"cells": [1], "decision": "basophil"}, {"cells": [1]},
    {"cells": "1", "decision": "Mono"}, {"cells": [1, 99999], "decision": "Mono"}, {"cells": [], "decision": "Mono"},
    {"cells": [1], "decision": "Mono", "reviewer": ""}, {"cells": [1], "decision": "Mono", "reviewer": 7},
    [1, 2], "Mono"])
def test_an_unchecked_value_is_refused_with_400_and_nothing_is_stored(app_review, body):
    app, review = app_review
    before = review.smear(1)
    got = app.test_client().post("/api/smears/1/decide", json=body, headers=_auth())
    assert got.status_code == 400 and got.get_json()["error"]
    assert review.audit() == [] and review.smear(1) == before


def test_a_body_that_is_not_json_or_too_large_is_refused(app_review):
    app, review = app_review
    client = app.test_client()
    assert client.post("/api/smears/1/decide", data="cells=1", headers=_auth()).status_code == 400
    big = {"cells": list(range(1, 60000)), "decision": "Mono"}
    assert client.post("/api/smears/1/decide", json=big, headers=_auth()).status_code == 413
    assert client.post("/api/smears/99/decide", json={"cells": [1], "decision": "Mono"},
                       headers=_auth()).status_code == 404
    assert review.audit() == []


def test_sign_is_refused_while_cells_are_left_then_the_smear_is_read_only(app_review):
    app, review = app_review
    client = app.test_client()
    refused = client.post("/api/smears/1/sign", json={}, headers=_auth())
    assert refused.status_code == 409 and "cannot be signed" in refused.get_json()["error"]
    ids = [c["id"] for c in review.smear(1)["cells"]]
    done = client.post("/api/smears/1/decide", json={"cells": ids, "decision": "confirm"}, headers=_auth()).get_json()
    assert done["smear"]["differential"]["n_undecided"] == 0 and done["smear"]["pending"] == 0
    signed = client.post("/api/smears/1/sign", json={"reviewer": "alice"}, headers=_auth())
    assert signed.status_code == 200 and signed.get_json()["smear"]["signed_by"] == "alice"
    assert client.post("/api/smears/1/decide", json={"cells": ids[:1], "decision": "Mono"},
                       headers=_auth()).status_code == 409
    assert client.post("/api/smears/1/reopen", json={"note": "recount"}, headers=_auth()).status_code == 200
    assert [t["kind"] for t in review.audit("S1")][-2:] == ["sign", "reopen"]


def test_the_smear_state_carries_the_live_differential(app_review):
    app, review = app_review
    state = app.test_client().get("/api/smears/1", headers=_auth()).get_json()
    rows = {r["class"]: r for r in state["differential"]["rows"]}
    cells = state["cells"]
    assert rows["Neutrophil"]["ai_n"] == rows["Band"]["ai_n"] + rows["Segment"]["ai_n"]
    assert sum(rows[c]["ai_n"] for c in CLASSES6) == len(cells)
    assert state["pending"] == sum(c["pending"] for c in cells)


def test_loopback_names():
    assert all(server.is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(server.is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "example.org", "::"))
