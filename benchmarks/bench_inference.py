"""Inference speed and parity of the scoring backends (issue 6). Not part of the test suite.

Prints, in one run:

1. images/s of each backend's engine on a batch of real cells at 320x320
   (batch 16; median and best of ``--repeats`` timed runs after a warm-up),
   and the ratio to nnabla;
2. the same for the whole ``predict`` (decode + resize + inference) on a
   folder of ``--predict-cells`` JPEGs, plus the decoding throughput alone and
   the wall time of the ``wbc-nnabla predict`` command;
3. parity on ``--parity-cells`` real pbc6 cells at 320: max |p - p_nnabla| and
   argmax agreement of every backend with nnabla.

The model is ``--model``, else one trained by ``wbc_nnabla.training.train``
(ResNet-18 from scratch, 64 px, ``--train-iters`` iterations of batch 16 on
pbc6 cells) and kept in ``--workdir`` for the next run. Load averages are
printed with every figure: other processes share the CPU.

    nice -n 10 .venv/bin/python benchmarks/bench_inference.py
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wbc_nnabla import classes, fileio, outputs, predictor  # noqa: E402

PROBS = [f"prob_{c}" for c in classes.CLASSES6]


def load() -> str:
    return "load %.2f/%.2f/%.2f" % os.getloadavg()


def sample_cells(data: Path, n: int, seed: int) -> pd.DataFrame:
    """``n`` pbc6 cells, stratified by class, in a fixed random order."""
    df = fileio.read_cells(data)
    per = int(np.ceil(n / df["label"].nunique()))
    pick = df.groupby("label", group_keys=False).apply(lambda g: g.sample(min(per, len(g)), random_state=seed))
    return pick.sample(frac=1.0, random_state=seed).head(n).reset_index(drop=True)


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


def engine_speed(engines, x, repeats, chunks):
    """images/s of ``engine.run`` on the batch ``x`` (per backend and, for ONNX backends, per chunk)."""
    rows = []
    for name, eng in engines.items():
        variants = [eng.chunk] + ([c for c in chunks if c != eng.chunk] if name != "nnabla" else [])
        for chunk in variants:
            eng.chunk, keep = chunk, eng.chunk
            runs, cpu = time_runs(lambda: eng.run(x), max(1, repeats // 2) if name == "nnabla" else repeats)
            eng.chunk = keep
            rate = [len(x) / r for r in runs]
            # CPU-seconds per image: with a busy machine the wall rate understates
            # the engine; cores / cpu_per_image bounds the rate on an idle machine.
            cpu_img = statistics.median(cpu) / len(x)
            rows.append(dict(backend=name, chunk=chunk or len(x), default=chunk == keep,
                             median=statistics.median(rate), best=max(rate), cpu_s_per_image=cpu_img,
                             load=load()))
            print(f"  {name:12s} chunk {chunk or len(x):2d}: median {rows[-1]['median']:6.2f} img/s, "
                  f"best {rows[-1]['best']:6.2f}, {cpu_img:.3f} CPU-s/img  ({rows[-1]['load']})", flush=True)
    return rows


def parity(engines, cells, size, batch_size) -> dict:
    """Max |p - p_nnabla| and argmax agreement of the ONNX backends on ``cells`` at ``size``."""
    print(f"\n[3] parity on {len(cells)} pbc6 cells at {size} px (nnabla reference; slow on CPU)", flush=True)
    out = {}
    for name in ("nnabla", "opencv", "onnxruntime"):
        out[name] = predictor.predict(engines[name], cells, size=size, batch_size=batch_size, progress=False)
        print(f"  {name:12s}: {out[name].attrs['seconds']:.0f} s ({load()})", flush=True)
    ref = out["nnabla"]
    par = {}
    for name in ("opencv", "onnxruntime"):
        diff = float(np.abs(out[name][PROBS].values - ref[PROBS].values).max())
        same = float((out[name]["pred6"] == ref["pred6"]).mean())
        par[name] = dict(max_abs_prob_diff=diff, argmax_agreement=same, n=len(cells))
        print(f"  {name:12s} vs nnabla: max |dp| = {diff:.2e}, same class {same * 100:.2f}% "
              f"({'PASS' if diff < 1e-4 and same == 1.0 else 'FAIL'})")
    accuracy = float((ref["pred6"] == ref["label"]).mean())
    top = ref[PROBS].values.max(axis=1)
    print(f"  (model sanity: nnabla accuracy {accuracy:.3f} on these cells, top probability mean {top.mean():.3f} "
          f"max {top.max():.3f}; predicted classes {ref['pred6'].value_counts().to_dict()})")
    par["nnabla_accuracy"], par["mean_top_prob"] = accuracy, float(top.mean())
    return par


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model .nnp (default: train one briefly, cached in --workdir)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pbc6")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/wbc_bench_inference"))
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunks", type=int, nargs="*", default=[1, 2, 4, 16],
                    help="engine call sizes to compare for the ONNX backends")
    ap.add_argument("--predict-cells", type=int, default=200)
    ap.add_argument("--parity-cells", type=int, default=500)
    ap.add_argument("--train-iters", type=int, default=40)
    ap.add_argument("--skip", nargs="*", default=[], choices=["speed", "predict", "parity"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WBC_NNABLA_CACHE", str(args.workdir / "onnx-cache"))
    results = dict(environment=outputs.environment(), cpu_count=predictor.cpu_count(), args=vars(args).copy())
    results["args"] = {k: str(v) for k, v in results["args"].items()}
    print(f"wbc_nnabla inference benchmark, {predictor.cpu_count()} cores, {load()}")

    model = args.model or trained_model(args)
    results["model"] = str(model)
    engines = {b: predictor.load_backend(model, b) for b in ("nnabla", "opencv", "onnxruntime")}
    auto = predictor.load_backend(model, "auto").name
    print(f"backend auto -> {auto}")

    if "speed" not in args.skip:
        cells = sample_cells(args.data, args.batch_size, seed=2)
        x = np.stack([predictor.load_input(p, args.size) for p in cells["path"]])
        print(f"\n[1] engine.run on {x.shape} float32 ({len(x)} real cells at {args.size}x{args.size})")
        rows = engine_speed(engines, x, args.repeats, args.chunks)
        ref = next(r["median"] for r in rows if r["backend"] == "nnabla")
        for r in rows:
            r["ratio_to_nnabla"] = r["median"] / ref
        print("  default chunk:  " + ", ".join(f"{r['backend']} {r['median']:.2f} img/s ({r['ratio_to_nnabla']:.1f}x)"
                                              for r in rows if r["default"]))
        results["speed"] = rows

    if "predict" not in args.skip:
        folder = args.workdir / f"jpegs{args.predict_cells}"
        cells = sample_cells(args.data, args.predict_cells, seed=3)
        folder.mkdir(exist_ok=True)
        for p in cells["path"]:                 # symlinks: the shared data stays read-only and uncopied
            link = folder / Path(p).name
            if not link.exists():
                link.symlink_to(p)
        paths = [str(p) for p in fileio.list_images(folder)]
        print(f"\n[2] whole predict on a folder of {len(paths)} JPEGs ({args.size} px, batch {args.batch_size})")
        t0 = time.perf_counter()
        for p in paths:
            predictor.load_input(p, args.size)
        serial = len(paths) / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in predictor._prefetch(paths, args.size, args.batch_size, workers=min(4, predictor.cpu_count() + 1)):
            pass
        pooled = len(paths) / (time.perf_counter() - t0)
        print(f"  decode+resize only: {serial:.0f} img/s on one thread, {pooled:.0f} img/s with the prefetch pool "
              f"({load()})")
        pred = dict(decode_serial=serial, decode_pool=pooled)
        for name in ("opencv", "onnxruntime"):
            df = predictor.predict(engines[name], folder, size=args.size, batch_size=args.batch_size, progress=False)
            pred[name] = len(df) / df.attrs["seconds"]
            print(f"  predict() {name:12s}: {pred[name]:6.2f} img/s ({load()})", flush=True)
        out = args.workdir / "pred_cli.csv"
        cmd = [sys.executable, "-m", "wbc_nnabla.cli", "predict", str(model), str(folder), str(out),
               "--size", str(args.size), "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode:
            print(proc.stderr)
        pred["cli_wall_s"] = wall
        pred["cli_img_per_s"] = len(paths) / wall
        print(f"  `wbc-nnabla predict MODEL {folder.name} OUT.csv --size {args.size}`: {wall:.1f} s wall "
              f"= {len(paths) / wall:.2f} img/s incl. start-up ({load()})")
        print("    " + "\n    ".join(proc.stdout.strip().splitlines()))
        results["predict"] = pred

    if "parity" not in args.skip:
        cells = sample_cells(args.data, args.parity_cells, seed=4)
        train_size = int(engines["nnabla"].meta["input_size"])
        results["parity"] = {}
        for size in dict.fromkeys((args.size, train_size)):   # the paper's size, and the training size
            results["parity"][size] = parity(engines, cells, size, args.batch_size)

    (args.workdir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults -> {args.workdir / 'results.json'}  ({load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
