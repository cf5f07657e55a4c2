"""The review database: created from predictions, one transaction per action, audit trail, signing,
and every refusal leaving the files as they were (no browser, no server)."""
import hashlib
import sqlite3

import pytest

from review_helpers import decide_all, write_predictions
from wbc_nnabla import scoring
from wbc_nnabla.predictions import read_predictions
from wbc_nnabla.review import db as rdb
from wbc_nnabla.review.db import Conflict, ReviewDB, ReviewError
from wbc_nnabla.review.load import default_db, open_review


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def pred(tmp_path):
    return write_predictions(tmp_path, per_class=4, smears=2)


def test_created_beside_the_predictions_with_the_scoring_stage_pending_cells(pred):
    review = open_review(pred, pending_threshold=0.6)
    assert review.path == default_db(pred) and review.path.name == "pred.review.sqlite"
    cells = read_predictions(pred)
    expected = int(scoring.pending_flags(cells, 0.6)["pending6"].sum())
    smears = review.smears()
    assert [s["name"] for s in smears] == ["S1", "S2"]
    assert sum(s["cells"] for s in smears) == len(cells) == 24
    assert sum(s["pending"] for s in smears) == expected > 0
    assert review.meta()["pending_cutoff"] == {"threshold": 0.6, "source": "given"}
    with sqlite3.connect(review.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == rdb.SCHEMA_VERSION
    # the same predictions open the same review again (with or without the same cut-off)
    assert open_review(pred).smears() == smears
    assert open_review(pred, pending_threshold=0.6).smears() == smears


def test_decide_undo_and_the_audit_trail(pred):
    review = open_review(pred, pending_threshold=0.6)
    sid = review.smear_id("S1")
    cells = review.smear(sid)["cells"]
    a, b = cells[0], cells[1]
    other = next(c for c in rdb.DECISIONS[:6] if c != a["ai"])
    r = review.decide(sid, [a["id"]], other, "alice")
    assert r["changed"] == [{"id": a["id"], "decision": other}]
    review.decide(sid, [a["id"], b["id"]], rdb.CONFIRM, "bob")     # a back to the AI's class, b confirmed
    state = {c["id"]: c for c in review.smear(sid)["cells"]}
    assert state[a["id"]]["decision"] == a["ai"] and state[b["id"]]["decision"] == b["ai"]
    assert state[b["id"]]["decided_by"] == "bob"
    # deciding what is already so records nothing
    assert review.decide(sid, [b["id"]], rdb.CONFIRM, "bob") == {"action_id": None, "changed": []}
    trail = review.audit("S1")
    assert [(t["kind"], t["reviewer"], t["previous"], t["new"]) for t in trail] == [
        ("classify", "alice", None, other), ("confirm", "bob", other, a["ai"]), ("confirm", "bob", None, b["ai"])]
    assert all(t["at"].endswith("+00:00") for t in trail)
    undone = review.undo(sid, "carol")
    state = {c["id"]: c for c in review.smear(sid)["cells"]}
    assert state[a["id"]]["decision"] == other and state[b["id"]]["decision"] is None
    assert {(t["kind"], t["previous"], t["new"]) for t in review.audit("S1")[-2:]} == {
        ("undo", a["ai"], other), ("undo", b["ai"], None)}
    assert undone["undone"] == 2
    review.undo(sid, "carol")
    assert review.smear(sid)["cells"][0]["decision"] is None
    with pytest.raises(Conflict, match="nothing to undo"):
        review.undo(sid, "carol")


def test_signing_is_refused_while_cells_are_left_and_a_signed_smear_is_read_only(pred):
    review = open_review(pred, pending_threshold=0.6)
    sid = review.smear_id("S1")
    ids = [c["id"] for c in review.smear(sid)["cells"]]
    review.decide(sid, ids[:-1], rdb.CONFIRM, "alice")
    with pytest.raises(Conflict, match="1 cell.s. not reviewed"):
        review.sign(sid, "alice")
    review.decide(sid, ids[-1:], rdb.UNUSABLE, "alice")
    signed = review.sign(sid, "alice")
    assert review.smears()[0]["signed_by"] == "alice" and review.smears()[0]["signed_at"] == signed["signed_at"]
    before = review.smear(sid)
    with pytest.raises(Conflict, match="read-only until it is reopened"):
        review.decide(sid, ids[:1], "Mono", "mallory")
    with pytest.raises(Conflict):
        review.undo(sid, "mallory")
    assert review.smear(sid) == before
    review.reopen(sid, "bob", "wrong count")
    trail = review.audit("S1")
    assert [(t["kind"], t["reviewer"], t["previous"], t["new"], t["note"]) for t in trail[-2:]] == [
        ("sign", "alice", "open", "signed", ""), ("reopen", "bob", "signed", "open", "wrong count")]
    with pytest.raises(Conflict, match="nothing to undo"):   # undo does not reach back across the reopening
        review.undo(sid, "bob")
    review.decide(sid, ids[:1], "Mono", "bob")
    assert review.smear(sid)["cells"][0]["decision"] == "Mono"


def test_bad_values_store_nothing(pred):
    review = open_review(pred)
    sid = review.smear_id("S1")
    other = review.smear_id("S2")
    foreign = review.smear(other)["cells"][0]["id"]
    ids = [c["id"] for c in review.smear(sid)["cells"]]
    for cells, decision, who in (([ids[0]], "Monocyte?", "a"), ([ids[0]], "mono", "a"), ([ids[0]], None, "a"),
                                 ([], "Mono", "a"), (["1"], "Mono", "a"), ([True], "Mono", "a"),
                                 ([ids[0], foreign], "Mono", "a"), ([ids[0], ids[0]], "Mono", "a"),
                                 ([ids[0]], "Mono", ""), ([ids[0]], "Mono", "x" * 81), ([ids[0]], "Mono", "a\nb")):
        with pytest.raises(ReviewError):
            review.decide(sid, cells, decision, who)
    assert review.audit() == []
    assert all(c["decision"] is None for c in review.smear(sid)["cells"])


def test_two_connections_see_each_others_decisions(pred):
    first = open_review(pred)
    second = ReviewDB(first.path)
    sid = first.smear_id("S2")
    decide_all(first, sid)
    assert second.smears()[1]["reviewed"] == second.smears()[1]["cells"]


def test_a_file_of_another_format_is_refused_and_left_unchanged(pred, tmp_path):
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database\n")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    con.close()
    for path, message in ((text, "not a wbc_nnabla review database"), (other, "another application")):
        before = _digest(path)
        with pytest.raises(ReviewError, match=message) as e:
            open_review(pred, path)
        assert str(path) in str(e.value)
        assert _digest(path) == before and not path.with_name(path.name + "-wal").exists()
    newer = open_review(pred, tmp_path / "newer.sqlite").path
    with sqlite3.connect(newer) as con:
        con.execute("PRAGMA user_version = 2")
    con.close()
    before = _digest(newer)
    with pytest.raises(ReviewError, match="schema version 2"):
        open_review(pred, newer)
    assert _digest(newer) == before


def test_predictions_of_another_run_are_refused_naming_both_files(pred, tmp_path):
    review = open_review(pred, pending_threshold=0.6)
    before = _digest(review.path)
    other = write_predictions(tmp_path, per_class=4, smears=2, seed=1, name="other.csv")   # same cells, other probs
    with pytest.raises(ReviewError, match="does not match") as e:
        open_review(other, review.path)
    assert str(other) in str(e.value) and str(review.path) in str(e.value)
    with pytest.raises(ReviewError, match="began with pending cut-off 0.6"):
        open_review(pred, review.path, pending_threshold=0.7)
    assert _digest(review.path) == before


def test_a_missing_image_is_named_and_nothing_is_written(pred, tmp_path):
    gone = sorted((tmp_path / "cells").iterdir())[3]
    gone.unlink()
    with pytest.raises(ReviewError, match="image not found") as e:
        open_review(pred)
    assert str(gone) in str(e.value)
    assert not default_db(pred).exists()


def test_the_predictions_and_images_are_never_written(pred, tmp_path):
    files = [pred, pred.with_suffix(".json")] + sorted((tmp_path / "cells").iterdir())
    before = {p: (_digest(p), p.stat().st_mtime_ns) for p in files}
    review = open_review(pred, pending_threshold=0.6)
    for sid in (review.smear_id("S1"), review.smear_id("S2")):
        decide_all(review, sid)
        review.sign(sid, "alice")
    assert {p: (_digest(p), p.stat().st_mtime_ns) for p in files} == before
