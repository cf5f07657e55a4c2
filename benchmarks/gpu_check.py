"""GPU check in one command: the paper's training and inference on an NVIDIA GPU, against the CPU.

The paper trains at 480 px for 300 epochs with Neural Network Console on a GPU (section II.4); this
project has no GPU, so its ``cudnn`` path is checked here, on a machine that has one::

    pip install -e '.[cuda120]'            # nnabla-ext-cuda120 (CUDA 12); '.[cuda116]' for CUDA 11.6
    python benchmarks/gpu_check.py         # --context cudnn, 480 px, 3 epochs, the demo cells

What it does, each step timed, then one summary line, ``PASS`` or ``FAIL: <reason>`` (exit 0 / 1):

1. an NNC dataset of the embedded demo cells (20 PBC cells a class; ``--per-class`` of each class
   for training, ``--valid-per-class`` for validation), the JPEGs used in place;
2. training with the ``paper`` preset's settings (:class:`wbc_nnabla.recipe.TrainConfig`'s defaults:
   ResNet-18, ImageNet initialisation when its weights file is on the machine (else from scratch,
   said in the summary), AdaBound, the paper's ImageAugmentation, batch 16) at ``--size`` (480)
   for ``--epochs`` epochs in ``--context`` (``cudnn``); training images/s;
3. the forward pass of the exported weights in the context against the CPU on the same cells at the
   paper's inference size (``--infer-size``, 320): nnabla on the CPU and the ONNX export on
   onnxruntime (or OpenCV) on the CPU; every probability within ``--tolerance`` (1e-3);
4. inference images/s in the context (``predict`` with the nnabla backend, decode included, and the
   network alone on a batch of ``--batch-size``, best of 3).

With ``--context cpu`` and tiny sizes (``--size 32 --infer-size 32 --epochs 1 --per-class 2``) the same
steps run on the CPU in seconds: the test suite runs it so this script cannot rot (the
nnabla-vs-nnabla comparison is then exact, the comparison with the ONNX export is not trivial).
Status: the GPU run has not been run in this project (no GPU here); see docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import demo_nnc_dataset  # noqa: E402  (the demo cells as an NNC dataset)
from wbc_nnabla import fileio, predictor  # noqa: E402
from wbc_nnabla.errors import WBCError  # noqa: E402


def gpu_name() -> str:
    """The first GPU's name from ``nvidia-smi`` ("" without one)."""
    if not shutil.which("nvidia-smi"):
        return ""
    proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""


def train(args, ds: Path, out: Path) -> dict:
    """The paper preset's training for ``args.epochs`` at ``args.size`` in ``args.context``; its summary."""
    from wbc_nnabla import training
    from wbc_nnabla.recipe import TrainConfig
    cfg = TrainConfig(epochs=args.epochs, size=args.size, batch_size=args.batch_size,
                      pretrained=initialisation(args.pretrained), context=args.context, tile_every=0, progress=False)
    t0 = time.perf_counter()
    summary = training.train(ds, out, cfg)
    rates = [h["images_per_s"] for h in summary["history"]]
    warm = rates[1:] or rates                   # the first epoch includes cuDNN's algorithm search
    return dict(seconds=time.perf_counter() - t0, images_per_s=float(np.median(warm)), per_epoch=rates,
                best=summary["best"])


def initialisation(pretrained: str) -> str:
    """``--pretrained``: ``auto`` is the paper's ImageNet start when its weights are on this machine
    (:func:`wbc_nnabla.pretrained.find_pretrained`; they are never downloaded at run time), else from
    scratch (the GPU path is the same; the summary line says which)."""
    if pretrained != "auto":
        return pretrained
    from wbc_nnabla import pretrained as zoo
    try:
        zoo.find_pretrained("imagenet")
        return "imagenet"
    except WBCError:
        return "none"


def forward(model: Path, x: np.ndarray, context: str) -> np.ndarray:
    """Probabilities of the nnabla graph of ``model`` on ``x`` ``(N, 3, S, S)`` in ``context``."""
    import nnabla as nn

    from wbc_nnabla import training
    with nn.context_scope(training.get_context(context)):
        return predictor.load_backend(model, "nnabla").run(x)


def parity(model: Path, cells: list, size: int, context: str) -> dict:
    """Max |p_context - p_cpu| against nnabla on the CPU and against the ONNX export on the CPU."""
    x = np.stack([predictor.load_input(p, size) for p in cells])
    got = forward(model, x, context)
    onnx = "onnxruntime" if "onnxruntime" in predictor.available_backends() else "opencv"
    refs = {"nnabla_cpu": forward(model, x, "cpu"),
            f"{onnx}_cpu": predictor.load_backend(model, onnx, precision="fp32").run(x)}
    return {k: dict(max_abs_prob_diff=float(np.abs(got - r).max()),
                    same_class=float((got.argmax(1) == r.argmax(1)).mean())) for k, r in refs.items()}


def inference(args, model: Path, cells: list) -> dict:
    """images/s in the context: ``predict`` (decode included) and the network alone (best of 3)."""
    import nnabla as nn

    from wbc_nnabla import training
    with nn.context_scope(training.get_context(args.context)):
        engine = predictor.load_backend(model, "nnabla")
        df = predictor.predict(engine, pd.DataFrame({"path": cells}), size=args.infer_size,
                               batch_size=args.batch_size, progress=False)
        x = np.stack([predictor.load_input(p, args.infer_size) for p in (cells * args.batch_size)[:args.batch_size]])
        engine.run(x)                                   # warm-up
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            engine.run(x)
            best = max(best, len(x) / (time.perf_counter() - t0))
    return dict(predict_img_per_s=len(df) / df.attrs["seconds"], network_img_per_s=best, cells=len(df))


def check(args, work: Path) -> dict:
    """Every step; raises WBCError (or anything) on failure, returns the figures."""
    from wbc_nnabla import training
    training.get_context(args.context)          # nnabla-ext-cuda missing: fails here, with the install line
    ds = demo_nnc_dataset(work / "dataset", args.per_class, args.valid_per_class)
    res = dict(context=args.context, gpu=gpu_name() if args.context != "cpu" else "", size=args.size,
               epochs=args.epochs, train_images=len(fileio.read_nnc_csv(ds / "train.csv")),
               pretrained=initialisation(args.pretrained))
    res["training"] = train(args, ds, work / "run")
    model = work / "run" / "model.nnp"
    cells = list(fileio.read_nnc_csv(ds / "valid.csv")["path"])
    res["parity"] = parity(model, cells, args.infer_size, args.context)
    res["inference"] = inference(args, model, cells)
    return res


def verdict(res: dict, tolerance: float) -> str:
    """``PASS`` or ``FAIL: <reason>`` from the parity figures."""
    worst = max(res["parity"].items(), key=lambda kv: kv[1]["max_abs_prob_diff"])
    if worst[1]["max_abs_prob_diff"] > tolerance:
        return (f"FAIL: {res['context']} forward differs from {worst[0]} by {worst[1]['max_abs_prob_diff']:.2e} "
                f"(> {tolerance:g})")
    return "PASS"


def summary_line(res: dict, status: str) -> str:
    t, i = res["training"], res["inference"]
    diff = ", ".join(f"{k} {v['max_abs_prob_diff']:.1e}" for k, v in res["parity"].items())
    return (f"gpu_check {status} | {res['context']}{' (' + res['gpu'] + ')' if res['gpu'] else ''} | train "
            f"{res['size']} px ({'ImageNet start' if res['pretrained'] == 'imagenet' else 'from scratch'}), "
            f"{res['epochs']} epochs of {res['train_images']} cells: {t['images_per_s']:.1f} img/s "
            f"({t['seconds']:.0f} s) | inference {res['infer_size']} px: network {i['network_img_per_s']:.1f} img/s, "
            f"predict {i['predict_img_per_s']:.1f} img/s | max |p - p_cpu|: {diff}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", default="cudnn", choices=["cudnn", "cpu"])
    ap.add_argument("--per-class", type=int, default=16, help="training cells per class (of 20)")
    ap.add_argument("--valid-per-class", type=int, default=4, help="validation (and parity) cells per class")
    ap.add_argument("--size", type=int, default=480, help="training size (the paper's 480)")
    ap.add_argument("--infer-size", type=int, default=320, help="inference size (the paper's 320)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pretrained", default="auto",
                    help="imagenet (the paper's start; its weights file must be in ~/nnabla_data, see "
                         "docs/training.md), none, or auto (default: imagenet when its file is there, else none)")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max |p_context - p_cpu| allowed")
    ap.add_argument("--out", type=Path, help="folder for the run and gpu_check.json (default: a temporary one)")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="wbc_gpu_check_"))
    res = dict(context=args.context, size=args.size, infer_size=args.infer_size, epochs=args.epochs)
    try:
        res.update(check(args, work), infer_size=args.infer_size)
        status = verdict(res, args.tolerance)
        line = summary_line(res, status)
    except (WBCError, RuntimeError, OSError) as e:   # a missing extension, a CUDA error, a download that failed
        status = f"FAIL: {type(e).__name__}: {str(e).strip().splitlines()[0]}"
        line = f"gpu_check {status} | context {args.context}"
    res["status"] = status
    work.mkdir(parents=True, exist_ok=True)
    (work / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str))
    print(line)
    return 0 if status == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
