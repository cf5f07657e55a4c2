"""The domain-shift warning measured: in-domain cells vs other labs' cells (a benchmark, not a test).

Uses a model trained on pbc6 before the check existed, gives it the domain reference of
its own training images (``wbc-nnabla domain-reference``: the public path for old models;
``train`` stores it in new ones), predicts three cell sets and reports per set the share
of cells outside the training domain and the median distance, per cell and over random
"smears" of SMEAR cells (the paper's smears have 150-200 cells), drawn many times:

5-class accuracy is given for the sets that keep pbc6's labels (d1's labels are not read).

* ``pbc6-valid``: the model's own validation split (same lab, unseen cells): in domain;
* ``zheng2018-d1``: 300 cells of another lab (rapid stain, other camera), labels not read;
* ``bccd``: WBC crops of ../shared/data/bccd-fields (square, 1.5x the VOC box's longer side,
  centred on the box), another lab and stain, no labels;
* ``pbc6-od+S``: the validation cells with their optical density scaled per channel by
  (1 + S, 1 - S, 1 + S/3): synthetic stain changes of the same cells, S = 0.05, 0.1, 0.2, 0.3;
* ``pbc6-exposure0.85``: the validation cells with RGB x 0.85 (a darker camera exposure).

The per-cell threshold comes from the training cells (the 0.99 quantile of their own
distances); the smear-level share (wbc_nnabla.sites.domain.SMEAR_SHARE) is read off the
in-domain rows of this table (the largest share among in-domain random smears, with a
margin), never from d1 alone.

    nice -n 5 /work/main/.venv/bin/python benchmarks/bench_domain.py --out /work/runs/shift/bench_domain

Prints a table and writes OUT/bench_domain.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wbc_nnabla import classes, fileio, predictor, segmentation  # noqa: E402
from wbc_nnabla.sites import domain  # noqa: E402
from wbc_nnabla.sites.reference import add_domain_reference  # noqa: E402

DATA = ROOT.parent.parent / "shared" / "data" if (ROOT.parent.parent / "shared").is_dir() else Path("/work/shared/data")


def bccd_crops(root: Path, out: Path) -> list:
    """One square PNG crop per WBC box of the VOC folder ``root`` (written once to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        boxes = fileio.read_voc(xml)
        for j, b in enumerate(boxes.to_dict("records")):
            target = out / f"{xml.stem}_{j}.png"
            if not target.is_file():
                rgb = fileio.read_rgb(root / "JPEGImages" / (b["image"] or xml.stem + ".jpg"))
                side = int(round(1.5 * max(b["xmax"] - b["xmin"], b["ymax"] - b["ymin"])))
                crop, _ = segmentation.crop_square(rgb, b["x"], b["y"], max(side, 32))
                cv2.imwrite(str(target), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
            paths.append(str(target))
    return paths


def recoloured(paths: list, out: Path, scale=(1.3, 0.8, 1.1), gain: float = 1.0) -> list:
    """Copies of ``paths``: optical density scaled per RGB channel, then RGB x ``gain`` (written once to ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    res = []
    for p in paths:
        target = out / (Path(p).stem + ".png")
        if not target.is_file():
            rgb = fileio.read_rgb(p).astype(np.float64)
            od = -np.log((rgb + 1) / 256) * np.asarray(scale)
            new = np.clip((256 * np.exp(-od) - 1) * gain, 0, 255).round().astype(np.uint8)
            cv2.imwrite(str(target), cv2.cvtColor(new, cv2.COLOR_RGB2BGR))
        res.append(str(target))
    return res


def smear_shares(flags: np.ndarray, dist: np.ndarray, n: int, draws: int, seed: int) -> dict:
    """Share outside and median distance over ``draws`` random smears of ``n`` cells (without replacement)."""
    rng = np.random.default_rng(seed)
    n = min(n, len(flags))
    share, med = [], []
    for _ in range(draws):
        idx = rng.choice(len(flags), n, replace=False)
        share.append(flags[idx].mean())
        med.append(np.median(dist[idx]))
    share, med = np.array(share), np.array(med)
    return dict(n=n, share_min=float(share.min()), share_p01=float(np.quantile(share, 0.01)),
                share_median=float(np.median(share)), share_p99=float(np.quantile(share, 0.99)),
                share_max=float(share.max()), median_distance_median=float(np.median(med)),
                flagged=float(np.mean([domain.smear_is_outside(s) for s in share])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("/work/runs/acc_user/seed0"),
                    help="a training run folder with dataset/ and train/model.nnp")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--smear", type=int, nargs="+", default=[150, 50, 20], help="cells per random smear")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--backend", default="opencv")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / "model_with_reference.nnp"
    ref = add_domain_reference(args.run / "train" / "model.nnp", args.run / "dataset", model, overwrite=True)
    valid_df = fileio.read_nnc_csv(args.run / "dataset" / "valid.csv")
    valid, labels = valid_df["path"].tolist(), valid_df["label"].tolist()
    sets = {"pbc6-valid": valid,
            "zheng2018-d1": sorted(str(p) for p in (args.data / "zheng2018-d1").glob("*.bmp")),
            "bccd": bccd_crops(args.data / "bccd-fields", args.out / "bccd_crops"),
            **{f"pbc6-od+{k:g}": recoloured(valid, args.out / f"od{k:g}", (1 + k, 1 - k, 1 + k / 3))
               for k in (0.05, 0.1, 0.2, 0.3)},
            "pbc6-exposure0.85": recoloured(valid, args.out / "exposure0.85", (1, 1, 1), 0.85)}
    engine = predictor.load_backend(model, args.backend)
    rows, result = [], dict(reference={k: ref[k] for k in ("n_cells", "cell_quantile", "cell_threshold",
                                                           "distance_quantiles", "source")}, sets={})
    for name, paths in sets.items():
        known = name.startswith("pbc6")          # copies of the validation cells keep their labels
        df = predictor.predict(engine, pd.DataFrame({"path": paths, "label": labels if known else ""}),
                               progress=False)
        dist, flags = df["domain_distance"].to_numpy(), df["outside_domain"].to_numpy(bool)
        acc5 = float((df["label"].map(classes.to_class5) == df["pred5"]).mean()) if known else None
        entry = dict(n_cells=len(df), accuracy5=acc5, share_outside=float(flags.mean()),
                     median_distance=float(np.median(dist)),
                     distance_quantiles={str(q): float(np.quantile(dist, q)) for q in (0.1, 0.5, 0.9)},
                     smears={str(n): smear_shares(flags, dist, n, args.draws, 0) for n in args.smear})
        result["sets"][name] = entry
        for n, s in entry["smears"].items():
            rows.append(dict(set=name, cells=len(df), accuracy5=acc5, cell_share_outside=entry["share_outside"],
                             median_distance=entry["median_distance"], smear_n=int(n), smear_share_min=s["share_min"],
                             smear_share_p99=s["share_p99"], smear_share_max=s["share_max"],
                             smears_flagged=s["flagged"]))
    table = pd.DataFrame(rows)
    print(f"reference: {ref['n_cells']} training images, cell threshold {ref['cell_threshold']:.3f} "
          f"(quantile {ref['cell_quantile']}); smear share threshold {domain.SMEAR_SHARE}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    (args.out / "bench_domain.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
