"""GroupNorm (``train --set norm=group``) through every backend with realistic weights. Not part of the test suite.

A trained BatchNorm model's convolutions, BatchNorm scale/shift and classifier are
put into the GroupNorm ResNet (``*/bn/{gamma,beta}`` -> ``*/group_normalization/{gamma,beta}``,
running statistics dropped): not a classifier anyone would use, but a network whose
weights and activations have trained magnitudes, unlike the tests' random ones.
Prints, for real pbc6 cells:

1. parity of the opencv and onnxruntime backends with nnabla (max |p - p_nnabla|,
   argmax agreement) at each ``--sizes``;
2. images/s of each backend's engine on a batch of 16 cells at the last size, for the
   BatchNorm model (normalisation folded into the convolutions) and the GroupNorm one
   (normalisation computed per image), median of ``--repeats`` after a warm-up.

Load averages are printed with the speeds: other processes share the CPU.

    nice -n 5 .venv/bin/python benchmarks/groupnorm_parity.py --model RUN/model.nnp
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wbc_nnabla import CLASSES6, fileio, modelfile, predictor  # noqa: E402

PROBS = [f"prob_{c}" for c in CLASSES6]
BACKENDS = ("nnabla", "opencv", "onnxruntime")


def groupnorm_copy(model: Path, out: Path) -> Path:
    """The GroupNorm ResNet with ``model``'s convolutions, BN scale/shift and fc, saved as ``out``."""
    params, meta = modelfile.read_model(model)
    if meta["norm"] != "batch":
        raise SystemExit(f"{model}: expected a BatchNorm model, got norm {meta['norm']!r}")
    gn = {k.replace("/bn/", "/group_normalization/"): v for k, v in params.items()
          if not k.endswith(("/bn/mean", "/bn/var"))}
    modelfile.save_nnp(out, gn, modelfile.model_meta(meta["arch"], meta["class_names"], meta["input_size"],
                                                     norm="group"))
    return out


def parity(model: Path, cells, sizes) -> None:
    for size in sizes:
        out = {b: predictor.predict(model, cells, size=size, backend=b, progress=False) for b in BACKENDS}
        ref = out["nnabla"][PROBS].to_numpy()
        for b in BACKENDS[1:]:
            got = out[b][PROBS].to_numpy()
            print(f"parity {size} px {b:12s} max|dp| {np.abs(got - ref).max():.2e}  "
                  f"argmax agreement {(got.argmax(1) == ref.argmax(1)).mean():.3f}  ({len(ref)} cells)")


def speed(model: Path, x: np.ndarray, repeats: int) -> dict:
    """{backend: images/s} of each engine on the batch ``x``."""
    rates = {}
    for b in BACKENDS:
        engine = predictor.load_backend(model, b)
        engine.run(x)                                   # warm-up (graph build, ONNX load)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            engine.run(x)
            times.append(time.perf_counter() - t0)
        rates[b] = len(x) / statistics.median(times)
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a trained BatchNorm ResNet .nnp")
    ap.add_argument("--data", default=str(Path(os.environ.get("WBC_SHARED_DATA", ROOT.parent / "shared" / "data"))
                                          / "pbc6"), help="cells (default $WBC_SHARED_DATA/pbc6)")
    ap.add_argument("--cells", type=int, default=60)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 320])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/wbc_groupnorm_parity")
    args = ap.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WBC_NNABLA_CACHE", str(Path(args.workdir) / "onnx"))
    gn = groupnorm_copy(Path(args.model), Path(args.workdir) / "groupnorm.nnp")
    cells = fileio.read_cells(args.data).sample(args.cells, random_state=0)
    parity(gn, cells, args.sizes)
    x = np.stack([predictor.load_input(p, args.sizes[-1]) for p in cells["path"][:16]])
    for name, model in (("BatchNorm", Path(args.model)), ("GroupNorm", gn)):
        rates = speed(model, x, args.repeats)
        print(f"speed {args.sizes[-1]} px batch 16 {name}: " + ", ".join(f"{b} {r:.1f} img/s" for b, r in rates.items())
              + "  (load %.2f/%.2f/%.2f)" % os.getloadavg())


if __name__ == "__main__":
    main()
