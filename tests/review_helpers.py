"""Test data of the review tests: demo cells copied into a folder and a predictions CSV of them.

Not part of the library; the review test modules import it by name (``from review_helpers import ...``).
The "AI" here is synthetic: each cell's probabilities favour its true class with a seeded noise, so
some calls are wrong and some unsure (pending), as a real model's would be. No nnabla.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from wbc_nnabla import fileio, predictions
from wbc_nnabla.classes import CLASSES6


def demo_cells(folder: Path, per_class: int = 4) -> pd.DataFrame:
    """Copy ``per_class`` demo cells of each class into ``folder``; ``path`` (relative to ``folder``), ``label``."""
    src = fileio.demo_data()
    rows = []
    (folder / "cells").mkdir(parents=True, exist_ok=True)
    for c in CLASSES6:
        for p in sorted((src / c).glob("*.jpg"))[:per_class]:
            shutil.copy(p, folder / "cells" / p.name)
            rows.append({"path": f"cells/{p.name}", "label": c})
    return pd.DataFrame(rows)


def write_predictions(folder: Path, per_class: int = 4, smears: int = 2, seed: int = 0, noise: float = 1.6,
                      name: str = "pred.csv") -> Path:
    """A predictions CSV (+ run JSON) of demo cells in ``folder``; cells dealt round-robin into smears S1, S2, ...

    Each cell's logits: 2.5 on its true class plus N(0, ``noise``) on every class (seeded).
    """
    folder = Path(folder)
    cells = demo_cells(folder, per_class)
    rng = np.random.RandomState(seed)
    cells["smear"] = [f"S{i % smears + 1}" for i in range(len(cells))]
    logits = rng.randn(len(cells), 6) * noise
    logits[np.arange(len(cells)), [CLASSES6.index(c) for c in cells["label"]]] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    table = predictions.predictions_table(cells, probs, CLASSES6)
    return predictions.write_predictions(table, folder / name, config={"model": "synthetic"}, overwrite=True)


def decide_all(review, smear_id: int, reviewer: str = "tester") -> None:
    """Decide every cell of a smear: its true label would need the predictions; here, confirm the AI."""
    ids = [c["id"] for c in review.smear(smear_id)["cells"] if c["decision"] is None]
    if ids:
        review.decide(smear_id, ids, "confirm", reviewer)


#: Chromium's flags: headless, and none of its own network traffic (this machine's network refuses it).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


def chromium(profile: Path):
    """A Selenium driver of Debian's headless Chromium (``/usr/bin/chromium``, ``chromedriver``) with a fresh
    profile folder; Selenium never downloads a browser or driver of its own here."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS + (f"--user-data-dir={profile}",):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


class ReviewServer:
    """``wbc-nnabla review PRED --db DB --no-browser FLAGS...`` in a child process; :meth:`start` again after
    :meth:`kill9` serves the same database on a new port with a new token."""

    def __init__(self, pred: Path, db: Path, *flags: str):
        self.pred, self.db, self.flags, self.proc, self.url = pred, db, flags, None, None

    def start(self) -> "ReviewServer":
        cmd = [sys.executable, "-m", "wbc_nnabla.cli", "review", str(self.pred), "--db", str(self.db),
               "--no-browser", *self.flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            m = re.search(r"(http://\S+\?token=\S+)", line)
            if m:
                self.url = m.group(1)
                # keep reading what the server prints: a full pipe would block it
                threading.Thread(target=lambda out: [None for _ in out], args=(self.proc.stdout,), daemon=True).start()
                return self
        raise RuntimeError(f"wbc-nnabla review printed no address (exit {self.proc.wait()}): {''.join(lines)}")

    @property
    def base(self) -> str:
        return self.url.split("/?token=")[0]

    @property
    def token(self) -> str:
        return self.url.split("token=")[1]

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
