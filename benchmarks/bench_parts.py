"""Pieces of bench_inference.py: cell sampling, timing, the brief training fallback, the PyTorch peer.

Not part of the package or the test suite.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wbc_nnabla import classes, fileio, predictor

PROBS = [f"prob_{c}" for c in classes.CLASSES6]


def load() -> str:
    return "load %.2f/%.2f/%.2f" % os.getloadavg()


def sample_cells(source, n: int, seed: int) -> pd.DataFrame:
    """``n`` cells of a cell table (or a source :func:`wbc_nnabla.fileio.read_cells` reads), stratified
    by class, in a fixed random order."""
    df = source if isinstance(source, pd.DataFrame) else fileio.read_cells(source)
    if df["label"].fillna("").eq("").all():
        return df.sample(min(n, len(df)), random_state=seed).reset_index(drop=True)
    return stratified(df, n, seed).head(n).reset_index(drop=True)


def stratified(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """About ``n`` rows of ``df``, as many of each ``label`` (all of a smaller class), in a seeded random order."""
    per = int(np.ceil(n / df["label"].nunique()))
    return df.sample(frac=1.0, random_state=seed).groupby("label", sort=False).head(per)


def trained_model(args) -> Path:
    """A model trained briefly by ``wbc_nnabla.training.train`` (cached in the workdir)."""
    out = args.workdir / "train"
    if (out / "model.nnp").is_file():
        print(f"model: reusing {out / 'model.nnp'}")
        return out / "model.nnp"
    from wbc_nnabla import training
    ds = args.workdir / "dataset"
    cells = sample_cells(args.data, 192, seed=1)
    valid = cells.groupby("label", group_keys=False).head(4)
    train = cells.drop(valid.index)
    for name, part in (("train.csv", train), ("valid.csv", valid)):
        fileio.write_nnc_csv(ds / name, part["path"], [classes.INDEX6[c] for c in part["label"]])
    t0 = time.perf_counter()
    training.train(ds, out, training.TrainConfig(epochs=1, batch_size=16, size=64, pretrained="none",
                                                 max_iterations=args.train_iters, train_eval_limit=32,
                                                 tile_every=0, progress=False))
    print(f"model: trained by wbc_nnabla.training.train, resnet18 from scratch, 64 px, {args.train_iters} "
          f"iterations of 16 pbc6 cells ({time.perf_counter() - t0:.0f} s) -> {out / 'model.nnp'}")
    return out / "model.nnp"


def time_runs(fn, repeats: int):
    """(wall seconds per run, process CPU seconds per run) after one warm-up call."""
    fn()  # warm-up: OpenCV/onnxruntime allocate and transform weights on the first call
    runs, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        runs.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return runs, cpu


def compute_speed(engines: dict, x: np.ndarray, repeats: int, chunks, threads: int) -> list:
    """images/s of ``engine.run`` on the batch ``x`` per engine (and, for ONNX engines, per call size)."""
    rows = []
    for name, eng in engines.items():
        variants = [eng.chunk] + ([c for c in chunks if c != eng.chunk] if name != "nnabla" else [])
        for chunk in variants:
            eng.chunk, keep = chunk, eng.chunk
            if name.startswith("opencv"):
                import cv2
                cv2.setNumThreads(threads)       # global: the last OpenCV engine made set it
            runs, cpu = time_runs(lambda: eng.run(x), max(1, repeats // 2) if name == "nnabla" else repeats)
            eng.chunk = keep
            rate = [len(x) / r for r in runs]
            # CPU-seconds per image: with a busy machine the wall rate understates the engine
            row = dict(engine=name, threads=1 if name == "nnabla" else threads, chunk=chunk or len(x),
                       default=chunk == keep, best=max(rate), median=statistics.median(rate),
                       cpu_s_per_image=statistics.median(cpu) / len(x), load=load())
            rows.append(row)
            print(f"  {name:17s} {row['threads']} thr chunk {row['chunk']:2d}: best {row['best']:6.2f} img/s, "
                  f"median {row['median']:6.2f}, {row['cpu_s_per_image']:.3f} CPU-s/img ({row['load']})", flush=True)
    return rows


def _peer(args, model: Path, x: np.ndarray, speed, threads) -> dict:
    """Run torch_peer.py on the model's weights: probabilities of ``x`` (and timings of ``speed``)."""
    from wbc_nnabla import models
    from wbc_nnabla.modelfile import read_model
    params, meta = read_model(model)
    conv = lambda c: dict(conv=c.conv, bn=c.bn, kernel=c.kernel, stride=c.stride)  # noqa: E731
    spec = dict(norm=meta.get("norm") or "batch", bn_eps=models.BN_EPS, stem=conv(models.STEM),
                blocks=[dict(convs=[conv(c) for c in b.convs],
                             projection=conv(b.projection) if b.has_projection else None)
                        for b in models.stages(meta["arch"])])
    with tempfile.TemporaryDirectory(prefix="wbc_torch_") as tmp:
        t = Path(tmp)
        (t / "spec.json").write_text(json.dumps(spec))
        np.savez(t / "params.npz", **params)
        np.save(t / "x.npy", x)
        cmd = [args.torch_python, str(Path(__file__).with_name("torch_peer.py")), str(t / "spec.json"),
               str(t / "params.npz"), "--inputs", str(t / "x.npy"), "--probs", str(t / "p.npy"),
               "--repeats", str(args.repeats), "--threads", *map(str, threads)]
        if speed is not None:
            np.save(t / "s.npy", speed)
            cmd += ["--speed", str(t / "s.npy")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"torch peer failed: {proc.stderr.strip()[-400:]}")
        out = json.loads(proc.stdout)
        out["probs"] = np.load(t / "p.npy")
    return out


def torch_speed(args, model: Path, x: np.ndarray, threads) -> list:
    """PyTorch eager images/s on ``x`` per thread count, with its parity to nnabla on ``x``."""
    if not args.torch_python:
        return []
    try:
        out = _peer(args, model, x, None, threads)
    except (RuntimeError, OSError) as e:
        print(f"  PyTorch peer skipped: {e}")
        return []
    ref = predictor.load_backend(model, "nnabla").run(x)
    diff = float(np.abs(out["probs"] - ref).max())
    rows = []
    for n, s in out["speed"].items():
        rows.append(dict(engine="torch", threads=int(n), chunk=len(x), default=True, best=s["best"],
                         median=s["median"], torch=out["torch"], max_abs_prob_diff_vs_nnabla=diff, load=load()))
        print(f"  {'torch eager':17s} {n} thr chunk {len(x):2d}: best {s['best']:6.2f} img/s, median "
              f"{s['median']:6.2f} (torch {out['torch']}; max |p - p_nnabla| {diff:.1e} on this batch) ({load()})")
    return rows


def torch_parity(args, model: Path, cells: pd.DataFrame, size: int, ref: np.ndarray) -> dict:
    """Max |p_torch - p_nnabla| and class agreement on ``cells`` at ``size``."""
    if not args.torch_python:
        return {}
    x = np.stack([predictor.load_input(p, size) for p in cells["path"]])
    try:
        out = _peer(args, model, x, x[:16], [1])
    except (RuntimeError, OSError) as e:
        print(f"  PyTorch peer skipped: {e}")
        return {}
    diff = float(np.abs(out["probs"] - ref).max())
    same = float((out["probs"].argmax(1) == ref.argmax(1)).mean())
    print(f"  {'torch eager':17s} vs nnabla: max |dp| = {diff:.2e}, same class {same * 100:.2f}% "
          f"{'PASS' if diff < 1e-4 and same == 1.0 else 'FAIL'}")
    return dict(max_abs_prob_diff=diff, argmax_agreement=same, n=len(x), torch=out["torch"])
