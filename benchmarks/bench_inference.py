"""Inference speed, parity and int8 accuracy of every scoring backend, side by side in one run (issues 6, 48).

Not part of the test suite. Prints, in one run, with the load average beside every figure:

1. **compute only**: images/s of each engine on a batch of 16 real cells at 320x320 (float32
   ``(16, 3, 320, 320)``; best and median of ``--repeats`` timed runs after a warm-up) at 1 and 2
   threads: PyTorch eager on the same weights (the reference peer, see ``torch_peer.py``), nnabla
   (single-threaded), OpenCV fp32, onnxruntime fp32, onnxruntime int8 and OpenCV running the same
   int8 (QDQ) graph; for the ONNX backends also per engine call size (``--chunks``);
2. **whole predict** (decode + resize + inference, :func:`wbc_nnabla.predictor.predict`) on a folder
   of ``--predict-cells`` real pbc6 JPEGs at 320 px, 1 and 2 threads, per backend and precision;
   decoding alone; the wall time of the ``wbc-nnabla predict`` command (``auto``, and ``--precision int8``);
3. **parity** on ``--parity-cells`` pbc6 cells at 320 px and at the training size: max |p - p_nnabla|
   and class agreement of OpenCV, onnxruntime (fp32 and int8) and PyTorch with nnabla;
4. **int8 accuracy**: fp32 vs int8 on the model's pbc6 validation split and on zheng2018-d1 (five
   classes, labels read as ``benchmarks/cross_site.py`` reads them), at the model's size: each
   accuracy, the drop, the share of cells with the same ``pred6`` and the max probability difference;
5. the **auto choice** (:func:`wbc_nnabla.quantize.choice_from_measurement`): backend/precision pairs
   by whole-predict speed on all cores, int8 kept only if the accuracy rule holds on both sets;
   ``--write-choice`` writes it to ``wbc_nnabla/data/auto_choice.json``, which ``auto`` follows.

int8 is calibrated (``--calibration``) on ``--calibration-cells`` cells of the model's *training*
split, so that neither the validation split nor the 200 JPEGs (drawn from pbc6 sources other than
those of the calibration cells and of the validation split) are ever scored by an int8 model
calibrated on them; the model's own calibration cells (its validation split, the library's default,
what ``auto`` uses) are used for d1 in addition and by the CLI run with ``auto``.

The model is ``--model`` (default ``../runs/ref64/model/model.nnp``, the reference: pbc6, paper recipe,
64 px, 10 epochs; its ``config.json`` names the dataset), else one trained briefly here.
PyTorch runs in a subprocess of ``--torch-python``, an interpreter with torch and numpy (nnabla needs
Python <= 3.10, the torch wheel on this disk is for 3.11)::

    python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.13.0 numpy
    nice -n 10 .venv/bin/python benchmarks/bench_inference.py --torch-python /tmp/torch-venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from wbc_nnabla import classes, fileio, outputs, predictor, quantize  # noqa: E402
from bench_parts import (PROBS, compute_speed, load, sample_cells, stratified, torch_parity,  # noqa: E402
                         torch_speed, trained_model)
from cross_site import d1_sources  # noqa: E402  (the d1 labels as cross_site reads them)

THREADS = (1, 2)


def prepare(args, model: Path) -> dict:
    """The cells of the run: the calibration CSV (training split), the folder of JPEGs, the accuracy sets."""
    cfg = json.loads((model.parent / "config.json").read_text())["config"]
    ds = Path(cfg["dataset_dir"])
    train = fileio.read_nnc_csv(ds / "train.csv")
    cal = stratified(train, args.calibration_cells, seed=5)
    cal_csv = args.workdir / "calibration_train.csv"
    cal[["path", "label"]].to_csv(cal_csv, index=False)
    taken = set()              # the cells (and their sources) of both calibrations: the train sample and valid.csv
    for cells in (cal_csv, ds / "valid.csv"):
        used = quantize.given_calibration_cells(cells).record()
        taken |= {f["path"] for f in used["files"] + used["origins"]}
    pool = fileio.read_cells(args.data)
    pool = pool[~pool["path"].map(lambda p: str(Path(p).resolve())).isin(taken)]
    folder = args.workdir / f"jpegs{args.predict_cells}"
    folder.mkdir(exist_ok=True)
    for p in sample_cells(pool, args.predict_cells, seed=3)["path"]:  # symlinks: the shared data stays uncopied
        if not (folder / Path(p).name).exists():
            (folder / Path(p).name).symlink_to(p)
    d1_sources(args.workdir, args.d1)          # OUT/d1.csv: path, five-class label
    d1 = args.workdir / "d1.csv"
    print(f"calibration: {len(cal)} cells of {ds / 'train.csv'} -> {cal_csv}; {len(fileio.list_images(folder))} "
          f"JPEGs from other pbc6 sources -> {folder}")
    return dict(dataset=ds, calibration=cal_csv, folder=folder, sets={"pbc6_valid": ds / "valid.csv", "d1": d1},
                train_size=int(cfg.get("export_size") or cfg["size"]))


def engines_at(model: Path, threads: int, size: int, cal: Path) -> dict:
    """Every engine at ``threads`` CPU threads (the int8 ones calibrated on ``cal`` at ``size`` px)."""
    out = {"nnabla": predictor.load_backend(model, "nnabla"),
           "opencv": predictor.load_backend(model, "opencv", threads),
           "onnxruntime": predictor.load_backend(model, "onnxruntime", threads),
           "onnxruntime-int8": predictor.load_backend(model, "onnxruntime", threads, "int8", size, cal)}
    q = out["onnxruntime-int8"]
    try:
        out["opencv-int8"] = predictor.OpenCVBackend(q.onnx_path, q.meta, threads, model_path=model)
        out["opencv-int8"].precision = "int8"
    except Exception as e:    # cv2.error: OpenCV cannot run this QDQ graph
        print(f"  OpenCV does not run the int8 (QDQ) graph: {str(e).strip().splitlines()[-1]}")
    return out


def section_compute(args, model: Path, run: dict, res: dict) -> None:
    print(f"\n[1] compute only: engine.run on 16 real cells at {args.size}x{args.size} float32, best of "
          f"{args.repeats} ({load()})", flush=True)
    cells = sample_cells(fileio.read_cells(run["folder"]), 16, seed=2)
    x = np.stack([predictor.load_input(p, args.size) for p in cells["path"]])
    rows = []
    for n in THREADS:
        engines = engines_at(model, n, args.size, run["calibration"])
        if n != THREADS[0]:
            engines.pop("nnabla")          # single-threaded whatever is asked: measured once
        rows += compute_speed(engines, x, args.repeats, args.chunks if n == max(THREADS) else [], n)
    rows += torch_speed(args, model, x, THREADS)
    res["compute"] = rows


def predict_rate(engine, folder: Path, size: int, batch: int) -> float:
    df = predictor.predict(engine, folder, size=size, batch_size=batch, progress=False)
    return len(df) / df.attrs["seconds"]


def section_predict(args, model: Path, run: dict, res: dict) -> dict:
    """Whole predict on the folder of JPEGs; returns images/s per (backend, precision) on all cores."""
    folder, size = run["folder"], args.size
    paths = [str(p) for p in fileio.list_images(folder)]
    print(f"\n[2] whole predict on {len(paths)} pbc6 JPEGs at {size} px, batch {args.batch_size} ({load()})")
    t0 = time.perf_counter()
    for p in paths:
        predictor.load_input(p, size)
    serial = len(paths) / (time.perf_counter() - t0)
    print(f"  decode+resize only: {serial:.0f} img/s on one thread ({load()})")
    out, rates = dict(decode_serial=serial, runs=[]), {}
    for n in THREADS:
        engines = engines_at(model, n, size, run["calibration"])
        if n != THREADS[-1] or args.skip_nnabla_predict:
            engines.pop("nnabla")
        for name, eng in engines.items():
            rate = predict_rate(eng, folder, size, args.batch_size)
            out["runs"].append(dict(engine=name, threads=n, img_per_s=rate, load=load()))
            print(f"  predict() {name:17s} {n} thread{'s' if n > 1 else ' '}: {rate:6.2f} img/s ({load()})",
                  flush=True)
            if n == predictor.cpu_count() and not name.startswith("opencv-int8"):
                rates[(eng.name, eng.precision)] = rate
    out["cli"] = cli_runs(args, model, folder, run["calibration"])
    res["predict"] = out
    return rates


def cli_runs(args, model: Path, folder: Path, cal: Path) -> list:
    """Wall time of ``wbc-nnabla predict`` (default auto; and ``--precision int8``), start-up included."""
    rows = []
    for extra in ([], ["--precision", "int8", "--calibration", str(cal)]):
        out = args.workdir / "pred_cli.csv"
        cmd = [sys.executable, "-m", "wbc_nnabla.cli", "predict", str(model), str(folder), str(out),
               "--size", str(args.size), "--no-progress", "--overwrite"] + extra
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        n = len(fileio.list_images(folder))
        rows.append(dict(flags=" ".join(extra) or "(auto)", wall_s=wall, img_per_s=n / wall, rc=proc.returncode,
                         stdout=proc.stdout.strip().splitlines()[:2]))
        print(f"  `wbc-nnabla predict MODEL {folder.name} OUT.csv --size {args.size} {' '.join(extra[:2])}`: "
              f"{wall:.1f} s wall = {n / wall:.2f} img/s incl. start-up ({load()})")
        print("    " + ("\n    ".join(proc.stdout.strip().splitlines()[:1]) if not proc.returncode else proc.stderr))
    return rows


def section_parity(args, model: Path, run: dict, res: dict) -> None:
    cells = sample_cells(fileio.read_cells(args.data), args.parity_cells, seed=4)
    res["parity"] = {}
    for size in dict.fromkeys((args.size, run["train_size"])):
        print(f"\n[3] parity with nnabla on {len(cells)} pbc6 cells at {size} px ({load()})", flush=True)
        engines = engines_at(model, predictor.cpu_count(), size, run["calibration"])
        out = {k: predictor.predict(e, cells, size=size, batch_size=args.batch_size, progress=False)
               for k, e in engines.items()}
        ref, par = out.pop("nnabla"), {}
        for name, df in out.items():
            diff = float(np.abs(df[PROBS].values - ref[PROBS].values).max())
            same = float((df["pred6"] == ref["pred6"]).mean())
            par[name] = dict(max_abs_prob_diff=diff, argmax_agreement=same, n=len(cells))
            verdict = ("PASS" if diff < 1e-4 and same == 1.0 else "FAIL") if "int8" not in name else "(int8)"
            print(f"  {name:17s} vs nnabla: max |dp| = {diff:.2e}, same class {same * 100:.2f}% {verdict}")
        if size == run["train_size"]:
            par["torch"] = torch_parity(args, model, cells, size, ref[PROBS].values)
        par["nnabla_accuracy"] = float((ref["pred6"] == ref["label"]).mean())
        print(f"  (nnabla accuracy on these cells at {size} px: {par['nnabla_accuracy']:.3f})")
        res["parity"][size] = par


def section_accuracy(args, model: Path, run: dict, res: dict) -> dict:
    """fp32 vs int8 at the model's size on each set; returns :func:`quantize.compare` figures per set."""
    size = run["train_size"]
    print(f"\n[4] int8 accuracy at {size} px, int8 calibrated on {run['calibration'].name} ({load()})", flush=True)
    fp32 = predictor.load_backend(model, "onnxruntime", precision="fp32")
    int8 = predictor.load_backend(model, "onnxruntime", None, "int8", size, run["calibration"])
    cv8 = predictor.OpenCVBackend(int8.onnx_path, int8.meta, model_path=model)
    own = predictor.load_backend(model, "onnxruntime", None, "int8", size)           # its own validation cells
    figures, extra = {}, {}
    for name, cells in run["sets"].items():
        got = {k: predictor.predict(e, cells, size=size, progress=False)
               for k, e in (("fp32", fp32), ("int8", int8), ("opencv_int8", cv8))
               + ((("int8_own_calibration", own),) if name == "d1" else ())}
        labels = list(got["fp32"]["label"])
        figures[name] = quantize.compare(got["fp32"][PROBS].values, got["int8"][PROBS].values, labels,
                                         classes.CLASSES6)
        five = {k: float((df["pred5"] == df["label"].map(classes.to_class5)).mean()) for k, df in got.items()}
        extra[name] = dict(acc5=five, others={k: quantize.compare(got["fp32"][PROBS].values, df[PROBS].values,
                                                                  labels, classes.CLASSES6)
                                              for k, df in got.items() if k not in ("fp32", "int8")})
        f = figures[name]
        print(f"  {name:10s} n={f['n']}: fp32 {f['fp32_accuracy']:.4f}, int8 {f['int8_accuracy']:.4f} "
              f"(drop {f['fp32_accuracy'] - f['int8_accuracy']:+.4f}, rule "
              f"{'holds' if quantize.accuracy_rule(f['fp32_accuracy'], f['int8_accuracy']) else 'FAILS'}); same "
              f"pred6 {100 * f['same_class']:.2f}%, max |dp| {f['max_prob_diff']:.3f}; five-class "
              + ", ".join(f"{k} {v:.4f}" for k, v in five.items()))
        for k, o in extra[name]["others"].items():
            print(f"    {k}: accuracy {o['int8_accuracy']:.4f}, same pred6 as fp32 {100 * o['same_class']:.2f}%")
    res["accuracy"] = dict(figures=figures, extra=extra, int8_check=quantize.summary(int8.int8),
                           own_check=quantize.summary(own.int8))
    return figures


def write_choice(args, rates: dict, figures: dict, res: dict) -> None:
    choice = quantize.choice_from_measurement(rates, figures)
    choice["measured"] = dict(command="benchmarks/bench_inference.py " + " ".join(sys.argv[1:]), load=load(),
                              date=time.strftime("%Y-%m-%d"), model=str(args.model), size=args.size,
                              cores=predictor.cpu_count(), environment=outputs.environment())
    res["choice"] = choice
    print(f"\n[5] auto order (whole predict, {predictor.cpu_count()} cores): "
          + ", ".join("/".join(p) for p in choice["order"])
          + f"; int8 rule holds on every set: {choice['int8_rule_holds_on_every_set']}")
    if args.write_choice:
        outputs.write_json(quantize.CHOICE_FILE, choice)
        print(f"  -> {quantize.CHOICE_FILE}")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_model = ROOT.parent / "runs" / "ref64" / "model" / "model.nnp"
    shared = Path(os.environ.get("WBC_SHARED_DATA", ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", type=Path, default=default_model if default_model.is_file() else None,
                    help="model .nnp with its training config.json beside it (default: the ref64 run, else one "
                         "trained briefly here)")
    ap.add_argument("--data", type=Path, default=shared / "pbc6")
    ap.add_argument("--d1", type=Path, default=shared / "zheng2018-d1")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/wbc_bench_inference"))
    ap.add_argument("--torch-python", default=os.environ.get("WBC_TORCH_PYTHON", "python3"),
                    help="an interpreter with torch and numpy for the PyTorch peer ('' to skip it)")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunks", type=int, nargs="*", default=[1, 4, 16],
                    help="engine call sizes to compare for the ONNX backends (at 2 threads)")
    ap.add_argument("--predict-cells", type=int, default=200)
    ap.add_argument("--parity-cells", type=int, default=500)
    ap.add_argument("--calibration-cells", type=int, default=480)
    ap.add_argument("--train-iters", type=int, default=40)
    ap.add_argument("--skip-nnabla-predict", action="store_true", help="leave nnabla out of the whole predict")
    ap.add_argument("--skip", nargs="*", default=[], choices=["compute", "predict", "parity", "accuracy"])
    ap.add_argument("--write-choice", action="store_true", help=f"write the auto choice to {quantize.CHOICE_FILE}")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WBC_NNABLA_CACHE", str(args.workdir / "onnx-cache"))
    res = dict(environment=outputs.environment(), cpu_count=predictor.cpu_count(),
               args={k: str(v) for k, v in vars(args).items()})
    print(f"wbc_nnabla inference benchmark, {predictor.cpu_count()} cores, {load()}")
    args.model = args.model or trained_model(args)
    run = prepare(args, args.model)
    for cal in (run["calibration"], None):    # made before any timing (None: the model's own cells, auto's)
        t0 = time.perf_counter()
        try:
            e = predictor.load_backend(args.model, "onnxruntime", None, "int8", args.size, cal)
            print(f"int8 at {args.size} px on {e.int8['calibration']['source']}: made or found in "
                  f"{time.perf_counter() - t0:.0f} s ({load()})")
        except quantize.QuantizeError as err:
            print(f"int8 at {args.size} px: {err}")
    steps = dict(compute=section_compute, predict=section_predict, parity=section_parity,
                 accuracy=section_accuracy)
    got = {k: f(args, args.model, run, res) for k, f in steps.items() if k not in args.skip}
    if got.get("predict") and got.get("accuracy"):
        write_choice(args, got["predict"], got["accuracy"], res)
    (args.workdir / "results.json").write_text(outputs.json_text(res))
    print(f"\nresults -> {args.workdir / 'results.json'}  ({load()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
