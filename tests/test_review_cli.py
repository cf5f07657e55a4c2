"""The review commands on the command line: what `review` prints (address with its token, the warning
for a non-loopback host), `review-export`, and one-line errors naming the file (exit 2)."""
import re

import pytest

from review_helpers import decide_all, write_predictions
from wbc_nnabla import cli
from wbc_nnabla.cli import review as review_commands
from wbc_nnabla.review import server
from wbc_nnabla.review.load import open_review


class FakeServer:
    """Stands in for werkzeug's server: the address is printed, then Ctrl+C at once."""

    def __init__(self, host, port):
        self.host, self.server_port, self.closed = host, port or 5999, False

    def serve_forever(self):
        raise KeyboardInterrupt

    def server_close(self):
        self.closed = True


@pytest.fixture
def fake_server(monkeypatch):
    made = []

    def make(app, host="127.0.0.1", port=0):
        made.append(FakeServer(host, port))
        return made[-1]
    monkeypatch.setattr(server, "make_server", make)
    return made


def test_review_prints_the_address_with_a_token_and_warns_off_loopback(tmp_path, fake_server, capsys):
    pred = write_predictions(tmp_path, per_class=2, smears=2)
    assert cli.main(["review", str(pred), "--no-browser", "--pending-threshold", "0.6"]) == 0
    out = capsys.readouterr()
    assert re.search(r"http://127\.0\.0\.1:5999/\?token=[\w-]{20,}", out.out)
    assert "pred.review.sqlite (12 cells in 2 smear(s)" in out.out and "warning" not in out.err
    assert fake_server[0].closed
    assert cli.main(["review", str(pred), "--no-browser", "--host", "0.0.0.0", "--port", "8123"]) == 0
    out = capsys.readouterr()
    assert "warning: --host 0.0.0.0 lets other machines reach this review" in out.err
    assert fake_server[1].host == "0.0.0.0" and fake_server[1].server_port == 8123
    tokens = re.findall(r"token=([\w-]+)", out.out)
    assert len(tokens) == 1


def test_review_errors_are_one_line_naming_the_file(tmp_path, fake_server, capsys):
    pred = write_predictions(tmp_path, per_class=2, smears=1)
    bad = tmp_path / "bad.sqlite"
    bad.write_text("hello")
    assert cli.main(["review", str(pred), "--db", str(bad), "--no-browser"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "not a wbc_nnabla review database" in err
    assert cli.main(["review", str(pred), "--no-browser", "--model", str(tmp_path / "none.nnp")]) == 2
    assert "none.nnp: no such model file" in capsys.readouterr().err
    assert not fake_server


def test_review_export_on_the_command_line(tmp_path, capsys):
    pred = write_predictions(tmp_path, per_class=2, smears=2)
    review = open_review(pred)
    sid = review.smear_id("S1")
    decide_all(review, sid)
    review.sign(sid, "alice")
    out = tmp_path / "labels.csv"
    assert cli.main(["review-export", str(review.path), str(out)]) == 0
    assert "6 reviewed cells of 1 smear(s)" in capsys.readouterr().out and out.is_file()
    assert cli.main(["review-export", str(review.path), str(out)]) == 2          # exists: never replaced silently
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["review-export", str(pred), str(tmp_path / "x.csv")]) == 2  # not a review database
    assert "not a wbc_nnabla review database" in capsys.readouterr().err


def test_grad_cam_on_demand_from_a_model(tmp_path, tiny_model):
    """``review --model``: the page's Grad-CAM comes from the model, built by the CLI (the review package
    never imports nnabla); the map of the AI's class over the cell, as a PNG of the cell's size."""
    import cv2
    import numpy as np
    pred = write_predictions(tmp_path, per_class=1, smears=1)
    review = open_review(pred)
    app = server.create_app(review, "t", "tester", cam=review_commands.gradcam_png(str(tiny_model / "model.nnp")))
    cell = review.smear(1)["cells"][0]
    got = app.test_client().get(f"/api/cells/{cell['id']}/gradcam", headers={"X-Review-Token": "t"})
    assert got.status_code == 200 and got.mimetype == "image/png"
    picture = cv2.imdecode(np.frombuffer(got.data, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == cv2.imread(review.cell_path(cell["id"])).shape
