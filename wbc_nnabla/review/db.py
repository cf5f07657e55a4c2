"""The review database: one SQLite file per review (the standard library's ``sqlite3``, WAL).

A lab's technologist confirms or reclassifies each cell the AI classified, marks what is no
leukocyte as unusable (out of the count) and signs each smear's differential (the paper's
"judgement pending" cells, section IV, are decided by a person). This module owns the file:
its schema, every write, and reading it back checked. It never writes the predictions CSV
or an image. See ``docs/review.md``.

Tables (schema version :data:`SCHEMA_VERSION`; ``PRAGMA application_id`` = :data:`APPLICATION_ID`
marks the file as a review database, ``PRAGMA user_version`` holds the schema version)::

    meta(key, value)              the predictions CSV, its cells' digest, the pending cut-off, ...
    smears(smear_id, name, signed_by, signed_at)
    cells(cell_id, smear_id, position, path, listed_path, ai, probs, pending, pending_reason,
          decision, decided_by, decided_at)
    actions(action_id, smear_id, kind, reviewer, at, undoes, undone_by, note)
    audit(audit_id, action_id, cell_id, previous, new)     one row per value an action changed
    audit_trail                   a view: when, who, what, smear, cell, previous, new

``decision`` is NULL (not reviewed), a class of Table 1 or :data:`UNUSABLE`. Every action is one
transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, ``synchronous=FULL``): a process killed
mid-review loses at most the action in flight.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence

from .. import outputs
from ..classes import CLASSES6
from ..errors import PathLike, WBCError


#: Schema version stored in the file (``PRAGMA user_version``); a file of another version is refused.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a review database ("WBCR").
APPLICATION_ID = 0x57424352
#: The decision "not a leukocyte / unusable": the cell leaves the count (CellaVision's "Not classed").
UNUSABLE = "Unusable"
#: What a reviewer can post besides a class: accept each selected cell's AI class.
CONFIRM = "confirm"
#: Values a cell's ``decision`` can hold (NULL aside).
DECISIONS = tuple(CLASSES6) + (UNUSABLE,)
#: Kinds of action in the ``actions`` table.
ACTION_KINDS = ("classify", "confirm", "unusable", "undo", "sign", "reopen")
#: Actions that change cells (what ``undo`` can take back).
DECISION_KINDS = ("classify", "confirm", "unusable")
#: Longest reviewer name accepted (characters).
MAX_REVIEWER = 80
SIGNED, OPEN = "signed", "open"

SCHEMA = f"""
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE smears (smear_id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, signed_by TEXT, signed_at TEXT);
CREATE TABLE cells (
    cell_id INTEGER PRIMARY KEY,
    smear_id INTEGER NOT NULL REFERENCES smears(smear_id),
    position INTEGER NOT NULL,
    path TEXT NOT NULL UNIQUE,
    listed_path TEXT NOT NULL,
    ai TEXT NOT NULL,
    probs TEXT NOT NULL,
    pending INTEGER NOT NULL,
    pending_reason TEXT NOT NULL,
    decision TEXT,
    decided_by TEXT,
    decided_at TEXT);
CREATE INDEX cells_smear ON cells(smear_id, position);
CREATE TABLE actions (
    action_id INTEGER PRIMARY KEY,
    smear_id INTEGER NOT NULL REFERENCES smears(smear_id),
    kind TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    at TEXT NOT NULL,
    undoes INTEGER REFERENCES actions(action_id),
    undone_by INTEGER REFERENCES actions(action_id),
    note TEXT NOT NULL DEFAULT '');
CREATE INDEX actions_smear ON actions(smear_id, action_id);
CREATE TABLE audit (
    audit_id INTEGER PRIMARY KEY,
    action_id INTEGER NOT NULL REFERENCES actions(action_id),
    cell_id INTEGER REFERENCES cells(cell_id),
    previous TEXT,
    new TEXT);
CREATE INDEX audit_action ON audit(action_id);
CREATE VIEW audit_trail AS
    SELECT a.at AS at, a.reviewer AS reviewer, a.kind AS kind, s.name AS smear, c.listed_path AS cell,
           u.previous AS previous, u.new AS new, a.action_id AS action_id, a.note AS note
    FROM audit u JOIN actions a ON a.action_id = u.action_id JOIN smears s ON s.smear_id = a.smear_id
    LEFT JOIN cells c ON c.cell_id = u.cell_id ORDER BY u.audit_id;
"""


class ReviewError(WBCError, ValueError):
    """A review database, predictions file or posted value that cannot be used; the message names it."""


class NotFound(ReviewError):
    """No such smear or cell (HTTP 404)."""


class Conflict(ReviewError):
    """An action the smear's state forbids: signing with cells left, changing a signed smear (HTTP 409)."""


def now() -> str:
    """The current time, UTC, ISO 8601 with milliseconds (what every record stores)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def check_reviewer(name) -> str:
    """A reviewer name: 1-:data:`MAX_REVIEWER` printable characters (stripped), else :class:`ReviewError`."""
    text = name.strip() if isinstance(name, str) else ""
    if not text or len(text) > MAX_REVIEWER or not text.isprintable():
        raise ReviewError(f"reviewer name {name!r}: expected 1-{MAX_REVIEWER} printable characters")
    return text


def check_decision(value) -> str:
    """A posted decision: a class of Table 1 (exact name), :data:`UNUSABLE` or :data:`CONFIRM`."""
    if not isinstance(value, str) or value not in DECISIONS + (CONFIRM,):
        raise ReviewError(f"decision {value!r}: expected one of {', '.join(DECISIONS + (CONFIRM,))}")
    return value


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); read-only opens never write."""
    uri = f"file:{path.resolve().as_posix()}?mode={'ro' if readonly else 'rw'}"
    con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30.0, check_same_thread=False)
    con.row_factory = sqlite3.Row
    if not readonly:
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
    return con


def check_file(path: PathLike) -> None:
    """Refuse a file that is not a review database of this schema version (read-only: nothing written)."""
    path = Path(path)
    if not path.is_file():
        raise ReviewError(f"{path}: no such review database")
    try:
        con = _connect(path, readonly=True)
        try:
            app = con.execute("PRAGMA application_id").fetchone()[0]
            version = con.execute("PRAGMA user_version").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise ReviewError(f"{path}: not a wbc_nnabla review database (SQLite says: {e})") from None
    if app != APPLICATION_ID:
        raise ReviewError(f"{path}: not a wbc_nnabla review database (an SQLite file of another application, "
                          f"application_id {app}); give another --db")
    if version != SCHEMA_VERSION:
        raise ReviewError(f"{path}: review database of schema version {version}; this wbc_nnabla reads version "
                          f"{SCHEMA_VERSION} (open it with the version that wrote it)")


def create(path: PathLike, smears: Sequence[str], cells: Iterable[dict], meta: Dict[str, object]) -> None:
    """Write a new review database at ``path`` (which must not exist yet).

    cells: dicts with ``smear`` (one of ``smears``), ``position``, ``path`` (absolute), ``listed_path``,
        ``ai`` (a class of Table 1), ``probs`` (six floats, Table 1 order), ``pending`` (bool),
        ``pending_reason``.
    meta: text-valued facts about the review (JSON-encoded).
    The file is built under a temporary name and renamed when complete.
    """
    path = Path(path)
    with outputs.atomic_files([path]) as (tmp,):
        con = sqlite3.connect(str(tmp), isolation_level=None)
        try:
            con.executescript(SCHEMA)
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN")
            con.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
            ids = {}
            for name in smears:
                ids[name] = con.execute("INSERT INTO smears(name) VALUES (?)", (name,)).lastrowid
            con.executemany(
                "INSERT INTO cells(smear_id, position, path, listed_path, ai, probs, pending, pending_reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(ids[c["smear"]], int(c["position"]), c["path"], c["listed_path"], c["ai"],
                  json.dumps([round(float(p), 6) for p in c["probs"]]), int(bool(c["pending"])),
                  c["pending_reason"]) for c in cells])
            con.execute("COMMIT")
        finally:
            con.close()


class ReviewDB:
    """An open review database (checked by :func:`check_file`); every method opens its own connection,
    so one object serves a threaded web server."""

    def __init__(self, path: PathLike):
        self.path = Path(path)
        check_file(self.path)

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = _connect(self.path)
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction (``BEGIN IMMEDIATE``: writers queue, readers go on); rolled back on any error."""
        con = _connect(self.path)
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.close()

    # ------------------------------------------------------------------ reading

    def meta(self) -> Dict[str, object]:
        """The ``meta`` table as a dict (values JSON-decoded)."""
        with self._read() as con:
            return {r["key"]: json.loads(r["value"]) for r in con.execute("SELECT key, value FROM meta")}

    def smears(self) -> List[dict]:
        """One dict per smear: ``id, name, cells, pending, reviewed, unusable, signed_by, signed_at``.

        ``pending`` counts the cells under the cut-off not yet decided; ``reviewed`` every decided cell.
        """
        sql = ("SELECT s.smear_id AS id, s.name AS name, s.signed_by AS signed_by, s.signed_at AS signed_at, "
               "COUNT(c.cell_id) AS cells, SUM(c.decision IS NOT NULL) AS reviewed, "
               "SUM(c.pending = 1 AND c.decision IS NULL) AS pending, SUM(c.decision = ?) AS unusable "
               "FROM smears s LEFT JOIN cells c ON c.smear_id = s.smear_id GROUP BY s.smear_id ORDER BY s.name")
        with self._read() as con:
            return [dict(r, reviewed=r["reviewed"] or 0, pending=r["pending"] or 0, unusable=r["unusable"] or 0)
                    for r in con.execute(sql, (UNUSABLE,))]

    def smear_id(self, name: str) -> int:
        """The id of the smear called ``name`` (:class:`NotFound` when there is none)."""
        with self._read() as con:
            row = con.execute("SELECT smear_id FROM smears WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"{self.path}: no smear {name!r}")
        return int(row[0])

    def smear(self, smear_id: int) -> dict:
        """``{id, name, signed_by, signed_at, can_undo, cells: [...]}``; each cell ``id, position, name (file),
        ai, probs, pending, reason, decision, decided_by, decided_at``, in the predictions' order."""
        with self._read() as con:
            head = self._smear_row(con, smear_id)
            rows = con.execute("SELECT * FROM cells WHERE smear_id = ? ORDER BY position", (smear_id,)).fetchall()
            undo = self._last_decision(con, smear_id)
        cells = [{"id": r["cell_id"], "position": r["position"], "name": Path(r["listed_path"]).name,
                  "ai": r["ai"], "probs": json.loads(r["probs"]), "pending": bool(r["pending"]),
                  "reason": r["pending_reason"], "decision": r["decision"], "decided_by": r["decided_by"],
                  "decided_at": r["decided_at"]} for r in rows]
        return {"id": smear_id, "name": head["name"], "signed_by": head["signed_by"], "signed_at": head["signed_at"],
                "can_undo": undo is not None and head["signed_at"] is None, "cells": cells}

    def tally(self, smear_id: int) -> dict:
        """The smear's state without its cells (what the page updates after an action, fast on 2,000 cells):
        ``{id, name, signed_by, signed_at, can_undo, counts: [(ai, decision, pending, n)]}``."""
        with self._read() as con:
            head = self._smear_row(con, smear_id)
            counts = [tuple(r) for r in con.execute(
                "SELECT ai, decision, pending, COUNT(*) FROM cells WHERE smear_id = ? GROUP BY ai, decision, pending",
                (smear_id,))]
            undo = self._last_decision(con, smear_id)
        return {"id": smear_id, "name": head["name"], "signed_by": head["signed_by"], "signed_at": head["signed_at"],
                "can_undo": undo is not None and head["signed_at"] is None, "counts": counts}

    def cells(self) -> List[dict]:
        """Every cell with its smear's name and sign state: ``cell_id, smear, signed_at, path, listed_path, ai,
        probs (list), pending, pending_reason, decision, decided_by, decided_at`` (smear, position order)."""
        sql = ("SELECT c.*, s.name AS smear, s.signed_by AS signed_by, s.signed_at AS signed_at FROM cells c "
               "JOIN smears s ON s.smear_id = c.smear_id ORDER BY s.name, c.position")
        with self._read() as con:
            return [dict(r, probs=json.loads(r["probs"]), pending=bool(r["pending"])) for r in con.execute(sql)]

    def cell_path(self, cell_id: int) -> str:
        """The image file of cell ``cell_id`` (:class:`NotFound` when there is none)."""
        with self._read() as con:
            row = con.execute("SELECT path FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        if row is None:
            raise NotFound(f"no cell {cell_id}")
        return row[0]

    def cell(self, cell_id: int) -> dict:
        """``{id, path, ai, smear_id}`` of cell ``cell_id`` (:class:`NotFound` when there is none)."""
        with self._read() as con:
            row = con.execute("SELECT cell_id, path, ai, smear_id FROM cells WHERE cell_id = ?", (cell_id,)).fetchone()
        if row is None:
            raise NotFound(f"no cell {cell_id}")
        return {"id": row[0], "path": row[1], "ai": row[2], "smear_id": row[3]}

    def audit(self, smear: Optional[str] = None) -> List[dict]:
        """The audit trail (oldest first): ``at, reviewer, kind, smear, cell, previous, new, action_id, note``."""
        with self._read() as con:
            if smear is None:
                return [dict(r) for r in con.execute("SELECT * FROM audit_trail")]
            return [dict(r) for r in con.execute("SELECT * FROM audit_trail WHERE smear = ?", (smear,))]

    # ------------------------------------------------------------------ helpers

    def _smear_row(self, con: sqlite3.Connection, smear_id: int) -> sqlite3.Row:
        row = con.execute("SELECT * FROM smears WHERE smear_id = ?", (smear_id,)).fetchone()
        if row is None:
            raise NotFound(f"no smear {smear_id}")
        return row

    def _open_smear(self, con: sqlite3.Connection, smear_id: int) -> sqlite3.Row:
        row = self._smear_row(con, smear_id)
        if row["signed_at"] is not None:
            raise Conflict(f"smear {row['name']} was signed by {row['signed_by']} at {row['signed_at']}: it is "
                           f"read-only until it is reopened")
        return row

    @staticmethod
    def _last_decision(con: sqlite3.Connection, smear_id: int) -> Optional[sqlite3.Row]:
        """The latest decision action of the smear not undone, made after its last reopening (None: none)."""
        return con.execute(
            "SELECT * FROM actions WHERE smear_id = ? AND kind IN ('classify', 'confirm', 'unusable') "
            "AND undone_by IS NULL AND action_id > COALESCE((SELECT MAX(action_id) FROM actions "
            "WHERE smear_id = ? AND kind = 'reopen'), 0) ORDER BY action_id DESC LIMIT 1",
            (smear_id, smear_id)).fetchone()

    @staticmethod
    def _action(con: sqlite3.Connection, smear_id: int, kind: str, reviewer: str, at: str,
                undoes: Optional[int] = None, note: str = "") -> int:
        return con.execute("INSERT INTO actions(smear_id, kind, reviewer, at, undoes, note) VALUES (?, ?, ?, ?, ?, ?)",
                           (smear_id, kind, reviewer, at, undoes, note)).lastrowid

    # ------------------------------------------------------------------ actions

    def decide(self, smear_id: int, cell_ids: Sequence[int], decision: str, reviewer: str) -> dict:
        """Set the decision of cells of one smear in one transaction; returns ``{action_id, changed}``.

        decision: a class of Table 1 (reclassify, or confirm when it is the AI's), :data:`UNUSABLE`, or
            :data:`CONFIRM` (each cell gets its own AI class).
        Cells whose decision would not change are left out (no audit row); when none changes no action
        is recorded (``action_id`` None). Raises :class:`ReviewError` for a value or cell outside the
        taxonomy or the smear (nothing stored), :class:`Conflict` for a signed smear.
        """
        decision = check_decision(decision)
        reviewer = check_reviewer(reviewer)
        ids = _cell_ids(cell_ids)
        kind = "confirm" if decision == CONFIRM else "unusable" if decision == UNUSABLE else "classify"
        at = now()
        with self._write() as con:
            self._open_smear(con, smear_id)
            marks = ",".join("?" * len(ids))
            rows = con.execute(f"SELECT cell_id, ai, decision FROM cells WHERE smear_id = ? AND cell_id IN ({marks})",
                               (smear_id, *ids)).fetchall()
            if len(rows) != len(ids):
                missing = sorted(set(ids) - {r["cell_id"] for r in rows})
                raise ReviewError(f"cell(s) {', '.join(map(str, missing[:5]))} are not cells of smear {smear_id}")
            changes = [(r["cell_id"], r["decision"], r["ai"] if decision == CONFIRM else decision) for r in rows]
            changes = [c for c in changes if c[1] != c[2]]
            if not changes:
                return {"action_id": None, "changed": []}
            action = self._action(con, smear_id, kind, reviewer, at)
            self._apply(con, action, changes, reviewer, at)
        return {"action_id": action, "changed": [{"id": c, "decision": new} for c, _, new in changes]}

    @staticmethod
    def _apply(con: sqlite3.Connection, action: int, changes, reviewer: str, at: str) -> None:
        """Store ``(cell_id, previous, new)`` changes of ``action`` and their audit rows."""
        con.executemany("UPDATE cells SET decision = ?, decided_by = ?, decided_at = ? WHERE cell_id = ?",
                        [(new, reviewer if new is not None else None, at if new is not None else None, c)
                         for c, _, new in changes])
        con.executemany("INSERT INTO audit(action_id, cell_id, previous, new) VALUES (?, ?, ?, ?)",
                        [(action, c, prev, new) for c, prev, new in changes])

    def undo(self, smear_id: int, reviewer: str) -> dict:
        """Take back the smear's last decision action (recorded as an ``undo`` action with its own audit rows).

        Refused (:class:`Conflict`) on a signed smear, when there is nothing to undo since the last
        reopening, or when a cell of that action was changed since (by another tab). Returns
        ``{action_id, undone, changed}``.
        """
        reviewer = check_reviewer(reviewer)
        at = now()
        with self._write() as con:
            head = self._open_smear(con, smear_id)
            last = self._last_decision(con, smear_id)
            if last is None:
                raise Conflict(f"smear {head['name']}: nothing to undo")
            rows = con.execute("SELECT u.cell_id, u.previous, u.new, c.decision FROM audit u JOIN cells c "
                               "ON c.cell_id = u.cell_id WHERE u.action_id = ?", (last["action_id"],)).fetchall()
            moved = [r["cell_id"] for r in rows if r["decision"] != r["new"]]
            if moved:
                raise Conflict(f"smear {head['name']}: cannot undo action {last['action_id']}: cell {moved[0]} was "
                               f"changed since (another tab?); reload")
            action = self._action(con, smear_id, "undo", reviewer, at, undoes=last["action_id"])
            changes = [(r["cell_id"], r["new"], r["previous"]) for r in rows]
            self._apply(con, action, changes, reviewer, at)
            con.execute("UPDATE actions SET undone_by = ? WHERE action_id = ?", (action, last["action_id"]))
        return {"action_id": action, "undone": last["action_id"],
                "changed": [{"id": c, "decision": new} for c, _, new in changes]}

    def sign(self, smear_id: int, reviewer: str) -> dict:
        """Sign the smear's differential: refused (:class:`Conflict`) while any cell is undecided (pending or
        not reviewed) or when it is signed already. Returns ``{action_id, signed_by, signed_at}``."""
        reviewer = check_reviewer(reviewer)
        at = now()
        with self._write() as con:
            head = self._open_smear(con, smear_id)
            left = con.execute("SELECT SUM(pending = 1), COUNT(*) FROM cells WHERE smear_id = ? AND decision IS NULL",
                               (smear_id,)).fetchone()
            if left[1]:
                raise Conflict(f"smear {head['name']} cannot be signed: {left[1]} cell(s) not reviewed, "
                               f"{left[0] or 0} of them pending")
            action = self._action(con, smear_id, "sign", reviewer, at)
            con.execute("INSERT INTO audit(action_id, cell_id, previous, new) VALUES (?, NULL, ?, ?)",
                        (action, OPEN, SIGNED))
            con.execute("UPDATE smears SET signed_by = ?, signed_at = ? WHERE smear_id = ?", (reviewer, at, smear_id))
        return {"action_id": action, "signed_by": reviewer, "signed_at": at}

    def reopen(self, smear_id: int, reviewer: str, note: str = "") -> dict:
        """Reopen a signed smear (recorded with who, when and ``note``); refused when it is not signed."""
        reviewer = check_reviewer(reviewer)
        note = note.strip()[:500] if isinstance(note, str) else ""
        at = now()
        with self._write() as con:
            head = self._smear_row(con, smear_id)
            if head["signed_at"] is None:
                raise Conflict(f"smear {head['name']} is not signed: nothing to reopen")
            action = self._action(con, smear_id, "reopen", reviewer, at, note=note)
            con.execute("INSERT INTO audit(action_id, cell_id, previous, new) VALUES (?, NULL, ?, ?)",
                        (action, SIGNED, OPEN))
            con.execute("UPDATE smears SET signed_by = NULL, signed_at = NULL WHERE smear_id = ?", (smear_id,))
        return {"action_id": action, "reopened_by": reviewer, "reopened_at": at}


def _cell_ids(values) -> List[int]:
    """Posted cell ids: a non-empty list of distinct integers (booleans and strings refused)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ReviewError("cells: expected a non-empty list of cell ids")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ReviewError(f"cells: expected positive integer cell ids, got {list(values)[:5]!r}")
    if len(set(values)) != len(values):
        raise ReviewError("cells: a cell id is listed twice")
    return list(values)
