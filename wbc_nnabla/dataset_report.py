"""The build report of a dataset folder (``build_report.json`` / ``.md``): counts per class and split,
padded crops, small WBC masks, skipped bad images. Written by :func:`wbc_nnabla.datasets.build_dataset`;
split from :mod:`~wbc_nnabla.datasets`. docs/datasets.md, "Build report".
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd

from .balancing import SPLITS, class_order

#: A removed-background crop keeping less than this share of its pixels is reported (likely a failed mask).
MIN_WBC_FRACTION = 0.01


def build_counts(cdf, split, variants, manifest, inference, crop_px) -> dict:
    used = manifest[manifest["image"] != ""]
    labels = cdf["label"].replace("", "unlabeled").to_numpy()
    per_class = OrderedDict()
    for c in class_order(labels):
        m = labels == c
        d = OrderedDict(sources=int(m.sum()))
        if inference:
            d["images"] = int((used["label"].replace("", "unlabeled") == c).sum())
        else:
            for s in SPLITS:
                ms = m & (split == s)
                n_var = [len(variants[i]) for i in np.nonzero(ms)[0]]
                d[f"{s}_sources"] = int(ms.sum())
                d[f"{s}_images"] = int(sum(n_var))
                d[f"{s}_unused_sources"] = int(sum(1 for n in n_var if n == 0))
                d[f"{s}_images_per_source"] = [int(min(n_var)), int(max(n_var))] if n_var else []
            n_all = [len(variants[i]) for i in np.nonzero(m)[0]]
            d["images"] = int(sum(n_all))
            d["identical_repeats"] = int(sum(max(0, n - 8) for n in n_all))
        per_class[c] = d
    out = OrderedDict(cells=int(len(cdf)), images=int(len(used)), classes=per_class)
    if not inference:
        out["split_images"] = {s: int((used["split"] == s).sum()) for s in SPLITS}
        out["repeats"] = [c for c, d in per_class.items() if d["identical_repeats"]]
    out["kinds"] = {k: int(v) for k, v in cdf["kind"].value_counts().sort_index().items()}
    pads = manifest[(manifest["image"] != "") & (manifest["pad_top"] != "")]
    padded = pads[(pads[["pad_top", "pad_bottom", "pad_left", "pad_right"]].astype(int).sum(axis=1) > 0)]
    out["padded_cells"] = int(padded["cell_id"].nunique())
    frac = pd.to_numeric(used.drop_duplicates("cell_id")["wbc_fraction"], errors="coerce")
    small = used.drop_duplicates("cell_id")[frac < MIN_WBC_FRACTION]
    out["small_wbc_masks"] = [{"cell_id": r.cell_id, "source": r.source_row, "wbc_fraction": float(r.wbc_fraction)}
                              for r in small.itertuples()]
    out["smaller_than_crop"] = int(((cdf["kind"] == "single") & (cdf["crop_px"] < crop_px)).sum())
    return out


def report_markdown(report: dict, config: dict) -> str:
    lines = [f"# build-dataset report ({report['mode']}, background {report['background']})", "",
             f"source: `{config['source']}`  ", f"crop {config['crop_px']} px, output {config['size']}x"
             f"{config['size']} px, seed {config['seed']}" +
             ("" if report["mode"] == "inference" else
              f", total {config['total']}, valid fraction {config['valid_fraction']}"), "",
             f"{report['cells']} source cells -> {report['images']} images", ""]
    if report.get("duplicates_dropped"):
        lines += [f"{report['duplicates_dropped']} repeated cell(s) of the source dropped (--dedupe)", ""]
    if report["mode"] == "inference":
        lines += ["| class | cells | images |", "| --- | ---: | ---: |"]
        lines += [f"| {c} | {d['sources']} | {d['images']} |" for c, d in report["classes"].items()]
    else:
        lines += ["| class | sources | train sources | valid sources | train images | valid images | "
                  "unused sources | images per source | identical repeats |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
        for c, d in report["classes"].items():
            ips = "/".join("-".join(map(str, d[f"{s}_images_per_source"])) or "-" for s in SPLITS)
            lines.append(f"| {c} | {d['sources']} | {d['train_sources']} | {d['valid_sources']} | "
                         f"{d['train_images']} | {d['valid_images']} | "
                         f"{d['train_unused_sources'] + d['valid_unused_sources']} | {ips} | "
                         f"{d['identical_repeats']} |")
        lines += ["", f"train images: {report['split_images']['train']}, "
                      f"valid images: {report['split_images']['valid']}"]
        if report["repeats"]:
            lines += ["", f"Too few source cells in {', '.join(report['repeats'])}: after all 8 dihedral "
                          "variants, variants were repeated (identical images listed more than once)."]
    lines += ["", f"cells by kind: {report['kinds']}; padded crops: {report['padded_cells']}; "
                  f"single-cell images smaller than the crop: {report['smaller_than_crop']}"]
    for w in report["warnings"]:
        lines.append(f"\nWARNING: {w}")
    if report.get("small_wbc_masks"):
        lines += ["", f"## Crops whose WBC mask kept < {MIN_WBC_FRACTION:.0%} of the pixels "
                      f"({len(report['small_wbc_masks'])}): check them", ""]
        lines += [f"- {m['cell_id']} (`{m['source']}`): {m['wbc_fraction']:.4f}" for m in report["small_wbc_masks"]]
    if report["skipped"]:
        lines += ["", f"## Skipped bad images ({len(report['skipped'])})", ""]
        lines += [f"- `{s['source']}`: {s['error']}" for s in report["skipped"]]
    if report["no_wbc_located"]:
        lines += ["", f"## Fields with no WBC located ({len(report['no_wbc_located'])})", ""]
        lines += [f"- `{s['source']}`" for s in report["no_wbc_located"]]
    return "\n".join(lines) + "\n"
