"""Cross-site benchmark (not a test): train on pbc6, test on another lab's cells (zheng2018-d1).

Every step is a `wbc-nnabla` command a user runs (nothing private); per variant and seed:

    wbc-nnabla build-dataset PBC6 OUT/data_sS --background keep --total 2400 --size 64 --seed S
    wbc-nnabla train OUT/data_sS OUT/VARIANT_sS --size 64 --epochs 10 --batch-size 32 \
        --pretrained none --seed S --no-progress [VARIANT's flags]
    wbc-nnabla predict OUT/VARIANT_sS/model.nnp OUT/data_sS/valid.csv ...   # in-domain, 6/5 classes
    wbc-nnabla predict OUT/VARIANT_sS/model.nnp OUT/d1.csv ...               # foreign lab, 5 classes
    wbc-nnabla adapt OUT/VARIANT_sS/model.nnp OUT/d1_unlabelled.csv OUT/VARIANT_sS/adapted_d1.nnp \
        --train-cells OUT/data_sS/train.csv [--no-scale]                     # AdaBN (+ WBC scale) on d1
    wbc-nnabla predict OUT/VARIANT_sS/adapted_d1.nnp OUT/d1.csv ...
    wbc-nnabla predict ... --stain reinhard --stain-reference OUT/data_sS/train.csv   # lever (c)
    wbc-nnabla predict ... --prior normal        # a healthy adult's differential as the class prior
    wbc-nnabla self-train OUT/VARIANT_sS/adapted_d1.nnp OUT/d1_unlabelled.csv OUT/VARIANT_sS/self_trained_d1.nnp
    wbc-nnabla predict ... --tta                 # test-time augmentation, at each stage above

with ``--infomax VARIANT``, information maximisation on d1 without its labels after ``adapt``, and
the same on the pbc6 validation cells from the model as exported (a same-lab check):

    wbc-nnabla infomax OUT/VARIANT_sS/adapted_d1.nnp OUT/d1_unlabelled.csv OUT/VARIANT_sS/infomax_d1.nnp
    wbc-nnabla infomax OUT/VARIANT_sS/model.nnp OUT/data_sS/valid.csv OUT/VARIANT_sS/infomax_valid.nnp
    wbc-nnabla predict OUT/VARIANT_sS/infomax_d1.nnp OUT/d1.csv ... [--prior normal]
    wbc-nnabla finetune OUT/VARIANT_sS/infomax_d1.nnp OUT/ft/n100_rR/labelled.csv OUT/ft/n100_rR/model_infomax.nnp --seed R   # --infomax-finetune

(``--infomax-prior none`` passes ``--prior none`` to both ``infomax`` runs and names their files
``infomax_none_*``, results in ``RUN/infomax_none.json``);

(a variant of another input size, ``robust96``, trains on its own ``OUT/data96_sS`` built with
``--size 96`` and the same split; ``robust_rm`` trains on dataset ① ``OUT/datarm_sS``, built with
``--background remove``, and is measured on ``OUT/d1_rm``, d1 with its background removed:
``wbc-nnabla build-dataset OUT/d1.csv OUT/d1_rm --inference --background remove --size 64``;
``robust_AB`` is the paper's Model B of that Model A: ``train OUT/data_sS OUT/robust_AB_sS ... --init
OUT/robust_rm_sS/model.nnp``, measured on d1 as the lab gives it; ``robust_fourier_bccd`` takes its
style cells from a third lab, ``wbc-nnabla build-dataset BCCD OUT/bccd --inference --crop 310 --size 64``);
with ``--ensembles``, the predictions of every variant's seeds averaged at each stage and along the fine-tuning curve:

    wbc-nnabla ensemble OUT/VARIANT_s0/pred_STAGE.csv OUT/VARIANT_s1/pred_STAGE.csv ... OUT/ensembles/VARIANT_s01/pred_STAGE.csv

with ``--ab-ensembles``, the paper's Model B and Model A of one seed, each on its own rendering of the
cells (d1 as photographed and ``OUT/d1_rm``; the pbc6 valid cells of ``data_sS`` and ``datarm_sS``), averaged:

    wbc-nnabla ensemble OUT/B_sS/pred_STAGE.csv OUT/robust_rm_sS/pred_STAGE.csv OUT/ensembles_ab/B+robust_rm_sS/pred_STAGE.csv --match source

and, with ``--finetune-curve VARIANT``, few-shot fine-tuning on N labelled d1 cells (N = 10, 25,
50, 100; a stratified pick, 3 repeats) of the d1-adapted model, scored on the remaining cells:

    wbc-nnabla finetune OUT/VARIANT_sS/adapted_d1.nnp OUT/ft/nN_rR/labelled.csv OUT/ft/nN_rR/model.nnp --seed R
    wbc-nnabla finetune OUT/VARIANT_sS/adapted_d1.nnp OUT/ft/nN_rR/labelled.csv OUT/ft/nN_rR/model_select.nnp --seed R --select   # --curve-select
    wbc-nnabla predict OUT/ft/nN_rR/model.nnp OUT/ft/nN_rR/rest.csv ...

zheng2018-d1 is the only labelled foreign set: it is a test set here. Every variant run is
reported (``--summarize`` prints the table of docs/research/cross_site_log.md), and no constant is chosen by
its d1 result alone (docs/research/cross_site_log.md says how each was chosen). Finished steps are kept, an
interrupted training resumes.

    nice -n 5 .venv/bin/python benchmarks/cross_site.py --out /work/runs/cross --variant color --seed 0
    .venv/bin/python benchmarks/cross_site.py --out /work/runs/cross --finetune-curve robust --seed 0
    .venv/bin/python benchmarks/cross_site.py --out /work/runs/cross --finetune-curve robust --seed 0 --curve-n 100 --curve-select
    .venv/bin/python benchmarks/cross_site.py --out /work/runs/cross --ensembles
    .venv/bin/python benchmarks/cross_site.py --out /work/runs/cross --ab-ensembles
    .venv/bin/python benchmarks/cross_site.py --out /work/runs/cross --summarize
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLI = [sys.executable, "-c", "import sys; from wbc_nnabla.cli import main; sys.exit(main())"]
#: Zheng et al. 2018 dataset 1 label codes.
D1_CLASSES = {1: "Neutrophil", 2: "Lymph", 3: "Mono", 4: "Eosinophil", 5: "Basophil"}


def sets(**values) -> list:
    """``train`` arguments for research settings, which are config keys: ``--set KEY=VALUE`` each
    (docs/training.md, "Settings")."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


COLOUR = sets(od_scale=0.4, od_shift=0.15, saturation=0.4, log_gamma=0.3)
WIDE_MAG = ["--min-scale", "0.6", "--max-scale", "1.6"]
ROBUST = ["--recipe", "robust"]
#: Train flags of each variant (added to the common CPU recipe). docs/research/cross_site_log.md explains each.
VARIANTS = {
    "baseline": [],
    "color": COLOUR,
    "colormag": COLOUR + WIDE_MAG,
    "group_colormag": sets(norm="group") + COLOUR + WIDE_MAG,
    "robust": ROBUST,       # = colormag + hue 30 (colormag alone was the recipe before)
    "robust20": ROBUST + ["--epochs", "20"],   # longer training (the budget is 10)
    "robust_sat": ROBUST + sets(saturation=1.0),   # greyscale to x2 saturation
    "robust_half": ROBUST + sets(color_prob=0.5),   # half of the images keep their colours
    "robust96": ROBUST + ["--size", "96"],      # a larger input (its own 96-px dataset)
    "robust_mixstyle": ROBUST + sets(mixstyle=0.5),   # + MixStyle after stages 1-3
    "robust_randconv": ROBUST + sets(randconv=0.5),   # + random convolutions (RandConv)
    "robust_fourier": ROBUST + sets(fourier=0.5),   # + d1's look (FDA; VARIANT_STYLE)
    "robust_fourier_bccd": ROBUST + sets(fourier=0.5),   # + a third lab's look (BCCD; no d1)
    "robust_narrow": ROBUST + ["--min-scale", "0.9", "--max-scale", "1.1"],   # the paper's Magnification
    "robust_blur": ROBUST + sets(blur=1.0),   # + a slight per-image blur
    "robust_bgfill": ROBUST + sets(fill="background"),   # zoom-out band: background, not edge streaks
    "robust_swa": ROBUST + sets(average_epochs=3),   # + weights averaged over the last 3 epochs
    "robust_rm": ROBUST,    # on dataset ① (background removed), d1 with its background removed
    "robust_AB": ROBUST,    # Model B: robust_rm_sS (Model A) fine-tuned on dataset ②, as reproduce
    "robust_ibn": ROBUST + sets(norm="ibn"),   # IBN-a: instance norm in half of early channels
    "robust_cosine": ROBUST + sets(schedule="cosine"),   # AdaBound's step falls along a cosine
    "robust_ls": ROBUST + sets(label_smoothing=0.1),   # label smoothing (Szegedy et al. 2016)
    "robust_mixup": ROBUST + sets(mixup=0.2),   # mixup (Zhang et al. 2018; alpha of their ImageNet runs)
    "robust20_mixup": ROBUST + ["--epochs", "20"] + sets(mixup=0.2),   # mixup, twice the training
}
#: Input size of each variant (default 64, the issue's CPU recipe); another size gets its own dataset.
VARIANT_SIZE = {"robust96": 96}
#: Background of each variant's datasets (default keep, dataset ②); ``remove`` builds dataset ① of
#: pbc6 and an inference set of d1 with the background removed (``OUT/d1_rm``), the paper's Model A data.
VARIANT_BACKGROUND = {"robust_rm": "remove"}
#: Variants that start from another variant's model of the same seed (``train --init``): the paper's
#: Model B, which fine-tunes Model A on dataset ② (section II.4), as ``reproduce`` trains it.
VARIANT_INIT = {"robust_AB": "robust_rm"}
#: Variants trained with style cells (``train --set style_cells=CELLS``): d1's cells without their labels
#: (``OUT/d1_unlabelled.csv``), the cells `adapt` sees, the labels never read; or the WBCs of a third
#: lab, ``bccd-fields`` (``OUT/bccd/cells.csv``, :func:`bccd_cells`), with nothing of d1.
VARIANT_STYLE = {"robust_fourier": "d1_unlabelled.csv", "robust_fourier_bccd": "bccd/cells.csv"}
#: Crop side (px) of the BCCD WBCs: 1.5 x the median longer side of the VOC WBC boxes (207 px), the
#: factor of ``bench_domain.py``'s BCCD crops; fixed before any run with them (docs/research/cross_site_log.md).
BCCD_CROP = 310
COMMON = ["--size", "64", "--epochs", "10", "--batch-size", "32", "--pretrained", "none", "--no-progress"]
CURVE_N = (10, 25, 50, 100)
CURVE_REPEATS = 3


def wbc(*args) -> None:
    """Run one `wbc-nnabla` command (the installed CLI's entry point) and stop on failure."""
    print("$ wbc-nnabla " + " ".join(str(a) for a in args), flush=True)
    subprocess.run(CLI + [str(a) for a in args], check=True)


def d1_sources(out: Path, d1: Path) -> None:
    """``OUT/d1.csv`` (path,label in the five-class names) and ``OUT/d1_unlabelled.csv`` (path only)."""
    codes = pd.read_csv(d1 / "labels.csv")
    df = pd.DataFrame({"path": [str(d1 / f"{i:03d}.bmp") for i in codes["image ID"]],
                       "label": codes["class label"].map(D1_CLASSES)})
    df.to_csv(out / "d1.csv", index=False)
    df[["path"]].to_csv(out / "d1_unlabelled.csv", index=False)


def five_class(pred_csv: Path) -> dict:
    """5-class accuracy, per-class recall and confusion (rows: truth, columns: prediction)."""
    from wbc_nnabla import classes
    df = pd.read_csv(pred_csv, keep_default_na=False)
    truth = df["label"].map(classes.to_class5)
    conf = pd.crosstab(truth, df["pred5"]).reindex(index=classes.CLASSES5, columns=classes.CLASSES5,
                                                  fill_value=0)
    present = conf.sum(axis=1) > 0
    recall = (pd.Series([conf.loc[c, c] for c in conf.index], conf.index) / conf.sum(axis=1))[present]
    return dict(acc5=float((df["pred5"] == truth).mean()), n=len(df), recall=recall.round(4).to_dict(),
                confusion=conf.to_dict(orient="index"))


def in_domain(pred_csv: Path) -> dict:
    """6- and 5-class accuracy on the pbc6 validation split."""
    from wbc_nnabla import classes
    df = pd.read_csv(pred_csv, keep_default_na=False)
    return dict(acc6=float((df["pred6"] == df["label"]).mean()),
                acc5=float((df["pred5"] == df["label"].map(classes.to_class5)).mean()), n=len(df))


def predict(model: Path, cells: Path, out_csv: Path, *flags) -> Path:
    if not out_csv.exists():
        wbc("predict", model, cells, out_csv, "--no-progress", *flags)
    return out_csv


def ensemble_once(members: list, target: Path, *flags) -> Path:
    """``wbc-nnabla ensemble MEMBERS TARGET [flags]``, unless an earlier run wrote TARGET."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        wbc("ensemble", *members, target, *flags)
    return target


def data_dir(out: Path, variant: str, seed: int) -> Path:
    """The pbc6 dataset a variant trains on: ``data_sS`` at 64 px, ``dataNN_sS`` at another size (same
    split), ``datarm_sS`` with the background removed."""
    size = VARIANT_SIZE.get(variant, 64)
    rm = "rm" if VARIANT_BACKGROUND.get(variant) == "remove" else ""
    return out / (f"data{rm}_s{seed}" if size == 64 else f"data{size}{rm}_s{seed}")


def d1_sets(out: Path, variant: str) -> tuple:
    """(labelled, unlabelled) d1 cells a variant is measured on: ``OUT/d1.csv`` as the lab gives them,
    or for a background-removed variant the inference set ``OUT/d1_rm`` (``d1NN_rm`` at another size;
    `build-dataset --inference --background remove`: the same crops, the WBC alone)."""
    if VARIANT_BACKGROUND.get(variant) != "remove":
        return out / "d1.csv", out / "d1_unlabelled.csv"
    size = VARIANT_SIZE.get(variant, 64)
    d1 = out / ("d1_rm" if size == 64 else f"d1{size}_rm")      # built at the size, named for it as data_dir
    if not (d1 / "cells.csv").exists():
        wbc("build-dataset", out / "d1.csv", d1, "--inference", "--background", "remove",
            "--size", size, "--no-progress")
    return d1 / "cells.csv", d1 / "cells.csv"          # adapt ignores the labels


def bccd_cells(out: Path, bccd: Path) -> Path:
    """``OUT/bccd/cells.csv``: one unlabelled crop per WBC box of the VOC folder ``bccd``
    (`build-dataset --inference --crop BCCD_CROP --size 64`), built once."""
    cells = out / "bccd" / "cells.csv"
    if not cells.exists():
        wbc("build-dataset", bccd, cells.parent, "--inference", "--crop", BCCD_CROP, "--size", 64, "--no-progress")
    return cells


def train_variant(out: Path, pbc6: Path, variant: str, seed: int, extra: list, bccd: Path) -> Path:
    data, run = data_dir(out, variant, seed), out / f"{variant}_s{seed}"
    if not (data / "valid.csv").exists():
        wbc("build-dataset", pbc6, data, "--background", VARIANT_BACKGROUND.get(variant, "keep"), "--total", 2400,
            "--size", VARIANT_SIZE.get(variant, 64), "--seed", seed, "--no-progress")
    init = []
    if variant in VARIANT_INIT:
        a = out / f"{VARIANT_INIT[variant]}_s{seed}" / "model.nnp"
        if not a.exists():
            sys.exit(f"{variant} starts from {a}: run --variant {VARIANT_INIT[variant]} --seed {seed} first")
        init = ["--init", a]
    if VARIANT_STYLE.get(variant) == "bccd/cells.csv":
        bccd_cells(out, bccd)
    style = sets(style_cells=out / VARIANT_STYLE[variant]) if variant in VARIANT_STYLE else []
    cfg = run / "config.json"
    if not (cfg.exists() and "best" in json.loads(cfg.read_text())):
        resume = ["--resume"] if (run / "checkpoint.json").exists() else []
        wbc("train", data, run, *COMMON, "--seed", seed, *resume, *VARIANTS[variant], *init, *style, *extra)
    return run


def is_batchnorm(model: Path) -> bool:
    """The model has BatchNorm running statistics for `adapt` (BatchNorm or IBN-a, not GroupNorm)."""
    from wbc_nnabla import modelfile
    return modelfile.read_model(model)[1].get("norm", "batch") != "group"


def evaluate(out: Path, variant: str, seed: int, stain: bool, self_train: bool = True) -> dict:
    """Every measurement of one trained variant; returns (and writes) ``RUN/cross_site.json``."""
    data, run = data_dir(out, variant, seed), out / f"{variant}_s{seed}"
    model = run / "model.nnp"
    d1, d1u = d1_sets(out, variant)
    res = dict(variant=variant, seed=seed, flags=VARIANTS[variant],
               pbc6_valid=in_domain(predict(model, data / "valid.csv", run / "pred_valid.csv")),
               pbc6_valid_prior=in_domain(predict(model, data / "valid.csv", run / "pred_valid_prior.csv",
                                                  "--prior", "normal")),
               d1=five_class(predict(model, d1, run / "pred_d1.csv")),
               d1_prior=five_class(predict(model, d1, run / "pred_d1_prior.csv", "--prior", "normal")))
    if is_batchnorm(model):
        for name, flags in (("adapted_bn", ["--no-scale"]), ("adapted", [])):
            adapted = run / f"{name}_d1.nnp"
            if not adapted.exists():
                # --train-cells: runs trained before the model stored its WBC scale get it measured
                wbc("adapt", model, d1u, adapted, "--train-cells", data / "train.csv", *flags)
            res[f"d1_{name}"] = five_class(predict(adapted, d1, run / f"pred_d1_{name}.csv"))
        res["d1_adapted_prior"] = five_class(predict(run / "adapted_d1.nnp", d1,
                                                     run / "pred_d1_adapted_prior.csv", "--prior", "normal"))
        tuned = run / "self_trained_d1.nnp"
        if self_train or tuned.exists():        # an earlier run's self-training stays in the table
            if not tuned.exists():
                wbc("self-train", run / "adapted_d1.nnp", d1u, tuned, "--no-progress")
            res["d1_self_trained"] = five_class(predict(tuned, d1, run / "pred_d1_self_trained.csv"))
            res["d1_self_trained_prior"] = five_class(predict(tuned, d1,
                                                              run / "pred_d1_self_trained_prior.csv",
                                                              "--prior", "normal"))
    res.update(tta_measures(d1, run, data, model))
    if stain:
        for method in ("white-balance", "reinhard", "macenko"):
            res[f"d1_{method}"] = five_class(predict(model, d1, run / f"pred_d1_{method}.csv",
                                                     "--stain", method, "--stain-reference", data / "train.csv"))
        res["d1_macenko_prior"] = five_class(predict(model, d1, run / "pred_d1_macenko_prior.csv",
                                                     "--stain", "macenko", "--stain-reference", data / "train.csv",
                                                     "--prior", "normal"))
        res["pbc6_valid_macenko"] = in_domain(predict(model, data / "valid.csv", run / "pred_valid_macenko.csv",
                                                      "--stain", "macenko", "--stain-reference", data / "train.csv"))
    (run / "cross_site.json").write_text(json.dumps(res, indent=1))
    return res


def tta_measures(d1: Path, run: Path, data: Path, model: Path) -> dict:
    """``predict --tta`` (8 turned/mirrored views per cell) at each stage: in domain, on d1 as exported
    and after ``adapt``, each without and with the prior."""
    res = dict(pbc6_valid_tta=in_domain(predict(model, data / "valid.csv", run / "pred_valid_tta.csv", "--tta")))
    models = [("", model)] + ([("_adapted", run / "adapted_d1.nnp")] if is_batchnorm(model) else [])
    for stage, m in models:
        for suffix, flags in (("", []), ("_prior", ["--prior", "normal"])):
            name = f"d1{stage}{suffix}_tta"
            res[name] = five_class(predict(m, d1, run / f"pred_{name}.csv", "--tta", *flags))
    return res


def finetune_curve(out: Path, variant: str, seed: int, sizes=CURVE_N, select: bool = False) -> dict:
    """Few-shot fine-tuning of the d1-adapted model on N labelled d1 cells, scored on the rest.

    With ``select``, also ``finetune --select`` (settings chosen by cross-validation inside the N
    labelled cells) at each N of at least ``finetune.MIN_SELECT_CELLS``. Points of earlier runs
    (other N) stay in ``finetune_curve.json``.
    """
    from wbc_nnabla import modelfile, sampling
    from wbc_nnabla.sites import finetune
    run = out / f"{variant}_s{seed}"
    start = run / "adapted_d1.nnp" if is_batchnorm(run / "model.nnp") else run / "model.nnp"
    d1 = pd.read_csv(out / "d1.csv")
    saved = run / "finetune_curve.json"
    rows = [row for row in (json.loads(saved.read_text()) if saved.exists() else []) if row["labelled"] not in sizes]
    for n in sizes:
        for r in range(CURVE_REPEATS):
            ft = run / "finetune" / f"n{n:03d}_r{r}"
            ft.mkdir(parents=True, exist_ok=True)
            pick = sampling.stratified_pick(d1["label"].tolist(), n, np.random.default_rng(r))
            d1.iloc[sorted(pick)].to_csv(ft / "labelled.csv", index=False)
            d1.drop(index=d1.index[sorted(pick)]).to_csv(ft / "rest.csv", index=False)
            if not (ft / "model.nnp").exists():
                wbc("finetune", start, ft / "labelled.csv", ft / "model.nnp", "--seed", r)
            prior = five_class(predict(ft / "model.nnp", ft / "rest.csv", ft / "pred_rest_prior.csv",
                                       "--prior", "normal"))
            tta = five_class(predict(ft / "model.nnp", ft / "rest.csv", ft / "pred_rest_tta.csv", "--tta"))
            row = dict(labelled=n, repeat=r, acc5_prior=prior["acc5"], acc5_tta=tta["acc5"],
                       **five_class(predict(ft / "model.nnp", ft / "rest.csv", ft / "pred_rest.csv")))
            chosen = ft / "model_select.nnp"
            if (select and n >= finetune.MIN_SELECT_CELLS) or chosen.exists():
                if not chosen.exists():
                    wbc("finetune", start, ft / "labelled.csv", chosen, "--seed", r, "--select", "--no-progress")
                row["select"] = modelfile.read_meta(chosen)["finetune"]["selection"]["chosen"]
                row["acc5_select"] = five_class(predict(chosen, ft / "rest.csv", ft / "pred_rest_select.csv"))["acc5"]
            rows.append(row)
            saved.write_text(json.dumps(sorted(rows, key=lambda x: (x["labelled"], x["repeat"])), indent=1))
    return rows


def infomax_tag(prior: str) -> str:
    """File-name tag of an ``infomax`` prior: ``""`` for the default ``normal``, else ``"_PRIOR"``."""
    return "" if prior == "normal" else f"_{prior}"


def infomax_measures(out: Path, variant: str, seed: int, prior: str = "normal") -> dict:
    """``infomax --prior PRIOR`` on d1's unlabelled cells (from the d1-adapted model) and on the pbc6
    validation cells (from the model as exported; the labels of neither are read), each scored by
    ``predict``; writes and returns ``RUN/infomax[_PRIOR].json``."""
    data, run, tag = data_dir(out, variant, seed), out / f"{variant}_s{seed}", infomax_tag(prior)
    d1_model, valid_model = run / f"infomax{tag}_d1.nnp", run / f"infomax{tag}_valid.nnp"
    flags = ["--prior", prior] if tag else []
    if not d1_model.exists():
        wbc("infomax", run / "adapted_d1.nnp", out / "d1_unlabelled.csv", d1_model, *flags, "--no-progress")
    if not valid_model.exists():
        wbc("infomax", run / "model.nnp", data / "valid.csv", valid_model, *flags, "--no-progress")
    res = dict(variant=variant, seed=seed, prior=prior,
               d1_infomax=five_class(predict(d1_model, out / "d1.csv", run / f"pred_d1_infomax{tag}.csv")),
               d1_infomax_prior=five_class(predict(d1_model, out / "d1.csv", run / f"pred_d1_infomax{tag}_prior.csv",
                                                   "--prior", "normal")),
               pbc6_valid_infomax=in_domain(predict(valid_model, data / "valid.csv",
                                                    run / f"pred_valid_infomax{tag}.csv")))
    path = run / f"infomax{tag}.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()) if path.exists() else {}, **res), indent=1))
    return res


def finetune_after_infomax(out: Path, variant: str, seed: int, n: int = 100, prior: str = "normal") -> list:
    """``finetune`` (default settings) of the infomax model on the fine-tuning curve's N labelled cells
    (the same picks, ``RUN/finetune/nN_rR/labelled.csv``), scored on the rest; added to
    ``RUN/infomax[_PRIOR].json``."""
    run, tag = out / f"{variant}_s{seed}", infomax_tag(prior)
    rows = []
    for r in range(CURVE_REPEATS):
        ft = run / "finetune" / f"n{n:03d}_r{r}"
        model = ft / f"model_infomax{tag}.nnp"
        if not model.exists():
            wbc("finetune", run / f"infomax{tag}_d1.nnp", ft / "labelled.csv", model, "--seed", r, "--no-progress")
        rows.append(dict(labelled=n, repeat=r, acc5=five_class(predict(model, ft / "rest.csv",
                                                                       ft / f"pred_rest_infomax{tag}.csv"))["acc5"]))
    path = run / f"infomax{tag}.json"
    res = json.loads(path.read_text())
    res["finetune"] = rows
    path.write_text(json.dumps(res, indent=1))
    return rows


def summarize_infomax(out: Path) -> None:
    """Print every ``RUN/infomax[_PRIOR].json`` beside the same run's figures without it, as Markdown."""
    paths = sorted(out.glob("*_s*/infomax*.json"))
    if not paths:
        return
    classes = ("Neutrophil", "Lymph", "Mono", "Eosinophil")
    recall = lambda d: ", ".join(f"{d['recall'].get(c, float('nan')):.2f}" for c in classes)
    pair = lambda d: f"{d['acc6']:.3f} / {d['acc5']:.3f}"
    print("\ninformation maximisation (`infomax --prior PRIOR` after `adapt`, d1 without labels; pbc6 valid: "
          "from the exported model on the valid cells without labels):\n")
    print("| variant | seed | prior | pbc6 valid 6 / 5 | pbc6 valid 6 / 5, infomax | d1 AdaBN + scale | same, prior "
          "| d1 infomax | d1 infomax, prior | d1 recall (Neu, Lym, Mon, Eos), adapt | same, infomax |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in paths:
        r, base = json.loads(p.read_text()), json.loads((p.parent / "cross_site.json").read_text())
        print(f"| {r['variant']} | {r['seed']} | {r.get('prior', 'normal')} | {pair(base['pbc6_valid'])} "
              f"| {pair(r['pbc6_valid_infomax'])} "
              f"| {base['d1_adapted']['acc5']:.3f} | {base['d1_adapted_prior']['acc5']:.3f} "
              f"| {r['d1_infomax']['acc5']:.3f} | {r['d1_infomax_prior']['acc5']:.3f} "
              f"| {recall(base['d1_adapted'])} | {recall(r['d1_infomax'])} |")
    for p in paths:
        r = json.loads(p.read_text())
        if r.get("finetune"):
            curve = {c["repeat"]: c for c in json.loads((p.parent / "finetune_curve.json").read_text())
                     if c["labelled"] == r["finetune"][0]["labelled"]}
            pairs = ", ".join(f"{curve[f['repeat']]['acc5']:.3f} -> {f['acc5']:.3f}" for f in r["finetune"])
            print(f"* {r['variant']} seed {r['seed']} (prior {r.get('prior', 'normal')}): `finetune` on "
                  f"{r['finetune'][0]['labelled']} labelled cells, from the adapted model -> from the infomax "
                  f"model, repeats 0-2: {pairs}")


#: Stages an ensemble of seeds is measured at (``RUN/pred_<stage>.csv`` of every member).
ENSEMBLE_STAGES = ("d1", "d1_prior", "d1_adapted", "d1_adapted_prior",
                   "d1_tta", "d1_prior_tta", "d1_adapted_tta", "d1_adapted_prior_tta")


def seed_sets(out: Path) -> dict:
    """{variant: [seed tuples]}: every variant's evaluated seeds (at least two), and its first three when it has more."""
    seeds = {}
    for p in sorted(out.glob("*_s*/cross_site.json")):
        r = json.loads(p.read_text())
        seeds.setdefault(r["variant"], []).append(int(r["seed"]))
    return {v: [tuple(s)] + ([tuple(s[:3])] if len(s) > 3 else []) for v, s in seeds.items() if len(s) >= 2}


def ensembles(out: Path) -> list:
    """``wbc-nnabla ensemble`` of each variant's seeds at every stage and along the fine-tuning curve;
    writes and returns ``OUT/ensembles.json`` (one row per ensemble and stage: members' and ensemble's accuracy)."""
    rows = []
    for variant, sets in seed_sets(out).items():
        for seeds in sets:
            folder = out / "ensembles" / f"{variant}_s{''.join(map(str, seeds))}"
            runs = [out / f"{variant}_s{s}" for s in seeds]
            jobs = [(stage, [r / f"pred_{stage}.csv" for r in runs], folder / f"pred_{stage}.csv")
                    for stage in ENSEMBLE_STAGES]
            for n in CURVE_N:
                for r in range(CURVE_REPEATS):
                    for name in ("pred_rest", "pred_rest_prior", "pred_rest_tta"):
                        sub = Path("finetune") / f"n{n:03d}_r{r}" / f"{name}.csv"
                        jobs.append((f"finetune{name[len('pred_rest'):]}_n{n:03d}_r{r}",
                                     [run / sub for run in runs], folder / sub))
            for stage, members, target in jobs:
                if not all(m.exists() for m in members):
                    continue
                ensemble_once(members, target)
                rows.append(dict(variant=variant, seeds=list(seeds), stage=stage, ensemble=five_class(target)["acc5"],
                                 members=[five_class(m)["acc5"] for m in members]))
    (out / "ensembles.json").write_text(json.dumps(rows, indent=1))
    return rows


def summarize_ensembles(out: Path) -> None:
    """Print the ensembles of ``OUT/ensembles.json`` as Markdown: members' mean (min-max) and the ensemble."""
    path = out / "ensembles.json"
    if not path.exists():
        return
    df = pd.DataFrame(json.loads(path.read_text()))
    df["set"] = df["variant"] + " s" + df["seeds"].map(lambda s: ",".join(map(str, s)))
    cell = lambda r: (f"{np.mean(r['members']):.3f} ({min(r['members']):.3f}-{max(r['members']):.3f}) "
                      f"-> **{r['ensemble']:.3f}**")
    plain = df[~df["stage"].str.startswith("finetune")]
    print("\nensembles of seeds (`wbc-nnabla ensemble`): d1 5-class, members' mean (min-max) -> ensemble:\n")
    print("| models | " + " | ".join(ENSEMBLE_STAGES) + " |")
    print("| --- | " + " | ".join("---" for _ in ENSEMBLE_STAGES) + " |")
    for name, g in plain.groupby("set", sort=False):
        by = {r["stage"]: cell(r) for _, r in g.iterrows()}
        print(f"| {name} | " + " | ".join(by.get(s, "-") for s in ENSEMBLE_STAGES) + " |")
    ft = df[df["stage"].str.startswith("finetune")].copy()
    if len(ft):
        ft["labelled"] = ft["stage"].str.extract(r"_n(\d+)_")[0].astype(int)
        ft["predict"] = ft["stage"].str.extract(r"^finetune_?([a-z]*)_n")[0].replace("", "plain")
        ft["member_mean"] = ft["members"].map(np.mean)
        g = ft.groupby(["set", "predict", "labelled"])[["member_mean", "ensemble"]].mean().reset_index()
        print("\nfine-tuned on N labelled d1 cells, scored on the rest (mean of 3 repeats): members' mean -> "
              "ensemble of the seeds' fine-tuned models:\n")
        print("| models | predict | " + " | ".join(f"N = {n}" for n in CURVE_N) + " |")
        print("| --- | --- | " + " | ".join("---" for _ in CURVE_N) + " |")
        for (name, how), h in g.groupby(["set", "predict"], sort=False):
            by = {int(r["labelled"]): f"{r['member_mean']:.3f} -> **{r['ensemble']:.3f}**" for _, r in h.iterrows()}
            flag = {"plain": "-", "prior": "`--prior normal`", "tta": "`--tta`"}[how]
            print(f"| {name} | {flag} | " + " | ".join(by.get(n, "-") for n in CURVE_N) + " |")


#: The paper's two renderings of a cell averaged (``ensemble --match source``): (Model A on dataset ①,
#: Model B on dataset ②) of the same seed; B first, so the ensemble lists the cells as photographed.
AB_PAIRS = (("robust_rm", "robust"), ("robust_rm", "robust_AB"))
AB_STAGES = ("valid", "valid_prior", "valid_tta") + ENSEMBLE_STAGES


def ab_ensembles(out: Path) -> list:
    """``wbc-nnabla ensemble B A --match source`` of each :data:`AB_PAIRS` pair and seed at every stage (in
    domain on the same pbc6 valid cells, and on d1); writes and returns ``OUT/ensembles_ab.json``."""
    rows = []
    for a, b in AB_PAIRS:
        for seed in sorted({int(p.parent.name.rsplit("_s", 1)[1]) for p in out.glob(f"{a}_s*/cross_site.json")}):
            runs = [out / f"{b}_s{seed}", out / f"{a}_s{seed}"]
            if not (runs[0] / "cross_site.json").exists():
                continue
            for stage in AB_STAGES:
                members = [r / f"pred_{stage}.csv" for r in runs]
                if not all(m.exists() for m in members):
                    continue
                target = out / "ensembles_ab" / f"{b}+{a}_s{seed}" / f"pred_{stage}.csv"
                ensemble_once(members, target, "--match", "source")
                score = in_domain if stage.startswith("valid") else five_class
                rows.append(dict(pair=f"{b} + {a}", seed=seed, stage=stage, ensemble=score(target),
                                 members=[score(m) for m in members]))
    (out / "ensembles_ab.json").write_text(json.dumps(rows, indent=1))
    return rows


def summarize_ab(out: Path) -> None:
    """Print ``OUT/ensembles_ab.json`` as Markdown: B / A -> the ensemble, 6-class in domain, 5-class on d1."""
    path = out / "ensembles_ab.json"
    if not path.exists():
        return
    df = pd.DataFrame(json.loads(path.read_text()))
    key = lambda stage: "acc6" if stage.startswith("valid") else "acc5"
    cell = lambda r: (f"{r['members'][0][key(r['stage'])]:.3f} / {r['members'][1][key(r['stage'])]:.3f} "
                      f"-> **{r['ensemble'][key(r['stage'])]:.3f}**")
    print("\nModel B + Model A (`ensemble --match source`): B / A -> ensemble; pbc6 valid 6-class, d1 5-class:\n")
    print("| models | seed | " + " | ".join(AB_STAGES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in AB_STAGES) + " |")
    for (pair, seed), g in df.groupby(["pair", "seed"], sort=False):
        by = {r["stage"]: cell(r) for _, r in g.iterrows()}
        print(f"| {pair} | {seed} | " + " | ".join(by.get(st, "-") for st in AB_STAGES) + " |")


def summarize_tta(out: Path) -> None:
    """Print ``predict --tta`` against plain predict per run as Markdown."""
    pairs = [("pbc6_valid", "pbc6 valid 6-class"), ("d1", "d1"), ("d1_prior", "d1, prior"),
             ("d1_adapted", "d1 adapted"), ("d1_adapted_prior", "d1 adapted, prior")]
    print("\ntest-time augmentation (`predict --tta`, 8 views): without -> with:\n")
    print("| variant | seed | " + " | ".join(t for _, t in pairs) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in pairs) + " |")
    for p in sorted(q for q in out.glob("*_s*/cross_site.json") if not q.parent.is_symlink()):
        r = json.loads(p.read_text())
        if "pbc6_valid_tta" not in r:
            continue
        key = lambda k: "acc6" if k == "pbc6_valid" else "acc5"
        cells = [f"{r[k][key(k)]:.3f} -> {r[k + '_tta'][key(k)]:.3f}" if k in r and k + "_tta" in r else "-"
                 for k, _ in pairs]
        print(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + " |")


def summarize(out: Path) -> None:
    """Print the variant table and the fine-tuning curve as Markdown."""
    print("| variant | seed | pbc6 valid 6 / 5 | d1 5-class | d1 white-balance | d1 Reinhard | d1 Macenko | d1 AdaBN "
          "| d1 AdaBN + scale | d1 recall (Neu, Lym, Mon, Eos), last column |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in sorted(q for q in out.glob("*_s*/cross_site.json") if not q.parent.is_symlink()):
        r = json.loads(p.read_text())
        acc = {k: (f"{r[k]['acc5']:.3f}" if k in r else "-")
               for k in ("d1", "d1_white-balance", "d1_reinhard", "d1_macenko", "d1_adapted_bn", "d1_adapted")}
        best = r.get("d1_adapted", r["d1"])["recall"]
        rec = ", ".join(f"{best.get(c, float('nan')):.2f}" for c in ("Neutrophil", "Lymph", "Mono", "Eosinophil"))
        print(f"| {r['variant']} | {r['seed']} | {r['pbc6_valid']['acc6']:.3f} / {r['pbc6_valid']['acc5']:.3f} "
              f"| {acc['d1']} | {acc['d1_white-balance']} | {acc['d1_reinhard']} | {acc['d1_macenko']} "
              f"| {acc['d1_adapted_bn']} "
              f"| {acc['d1_adapted']} | {rec} |")
    print("\nclass prior (`predict --prior normal`) and self-training (`self-train` of the d1-adapted model):\n")
    print("| variant | seed | pbc6 valid 6 / 5, prior | pbc6 valid 6 / 5, Macenko | d1, prior | d1 Macenko, prior "
          "| d1 AdaBN + scale, prior | d1 self-trained | d1 self-trained, prior "
          "| d1 recall (Neu, Lym, Mon, Eos), AdaBN + scale, prior |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for p in sorted(q for q in out.glob("*_s*/cross_site.json") if not q.parent.is_symlink()):
        r = json.loads(p.read_text())
        if "d1_prior" not in r:
            continue
        acc = {k: (f"{r[k]['acc5']:.3f}" if k in r else "-")
               for k in ("d1_prior", "d1_macenko_prior", "d1_adapted_prior", "d1_self_trained",
                         "d1_self_trained_prior")}
        best = r.get("d1_adapted_prior", r["d1_prior"])["recall"]
        rec = ", ".join(f"{best.get(c, float('nan')):.2f}" for c in ("Neutrophil", "Lymph", "Mono", "Eosinophil"))
        v, m = r["pbc6_valid_prior"], r.get("pbc6_valid_macenko")
        mac = f"{m['acc6']:.3f} / {m['acc5']:.3f}" if m else "-"
        print(f"| {r['variant']} | {r['seed']} | {v['acc6']:.3f} / {v['acc5']:.3f} | {mac} | {acc['d1_prior']} "
              f"| {acc['d1_macenko_prior']} | {acc['d1_adapted_prior']} | {acc['d1_self_trained']} "
              f"| {acc['d1_self_trained_prior']} | {rec} |")
    for p in sorted(out.glob("*_s*/finetune_curve.json")):
        df = pd.DataFrame(json.loads(p.read_text()))
        g = df.groupby("labelled")["acc5"].agg(["mean", "std", "min", "max", "count"])
        if "acc5_prior" in df:
            g["prior"] = df.groupby("labelled")["acc5_prior"].mean()
        if "acc5_tta" in df:
            g["tta"] = df.groupby("labelled")["acc5_tta"].mean()
        if "acc5_select" in df:
            g["select"] = df.groupby("labelled")["acc5_select"].mean()
        print(f"\nfine-tuning curve of {p.parent.name} (5-class accuracy on the remaining d1 cells):\n")
        print("| labelled cells | mean | sd | min | max | repeats | mean with --prior normal | mean with --tta "
              "| mean with --select |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for n, r in g.iterrows():
            more = [f"{r[k]:.3f}" if k in r and r[k] == r[k] else "-" for k in ("prior", "tta", "select")]
            print(f"| {n} | {r['mean']:.3f} | {r['std']:.3f} | {r['min']:.3f} | {r['max']:.3f} | {int(r['count'])} "
                  f"| " + " | ".join(more) + " |")
        if "acc5_select" in df:
            chosen = df.dropna(subset=["acc5_select"])
            for _, r in chosen.iterrows():
                c = r["select"]
                print(f"* N = {r['labelled']}, repeat {r['repeat']}: `--select` chose step {c['alpha']:g}, "
                      f"{c['iterations']} iterations: {r['acc5']:.3f} -> {r['acc5_select']:.3f}")
    summarize_tta(out)
    summarize_infomax(out)
    summarize_ensembles(out)
    summarize_ab(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/work/runs/cross"))
    ap.add_argument("--variant", choices=sorted(VARIANTS), action="append", default=[])
    ap.add_argument("--seed", type=int, action="append", default=[])
    ap.add_argument("--pbc6", type=Path, default=SHARED / "pbc6")
    ap.add_argument("--d1", type=Path, default=SHARED / "zheng2018-d1")
    ap.add_argument("--bccd", type=Path, default=SHARED / "bccd-fields",
                    help="VOC folder whose WBCs are robust_fourier_bccd's style cells")
    ap.add_argument("--no-stain", action="store_true", help="skip the colour-standardisation measurements")
    ap.add_argument("--no-self-train", action="store_true", help="skip the self-training measurement")
    ap.add_argument("--finetune-curve", metavar="VARIANT", choices=sorted(VARIANTS), default=None)
    ap.add_argument("--curve-n", type=int, action="append", default=[],
                    help=f"labelled cells of the fine-tuning curve (repeatable; default {CURVE_N})")
    ap.add_argument("--curve-select", action="store_true",
                    help="add `finetune --select` at each point of the curve (N >= its minimum)")
    ap.add_argument("--infomax", metavar="VARIANT", choices=sorted(VARIANTS), default=None,
                    help="measure `infomax` on d1 and on the pbc6 valid cells (the variant's --seed runs)")
    ap.add_argument("--infomax-prior", choices=("normal", "none"), default="normal",
                    help="with --infomax: the class prior `infomax` is given (default normal)")
    ap.add_argument("--infomax-finetune", action="store_true",
                    help="with --infomax: also `finetune` the infomax model on the curve's 100 labelled cells")
    ap.add_argument("--ensembles", action="store_true",
                    help="ensemble the seeds of every variant (`wbc-nnabla ensemble`) and write OUT/ensembles.json")
    ap.add_argument("--ab-ensembles", action="store_true",
                    help="average Model B and Model A of each seed (`ensemble --match source`, AB_PAIRS) and write "
                         "OUT/ensembles_ab.json")
    ap.add_argument("--summarize", action="store_true")
    a, extra = ap.parse_known_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.summarize:
        return summarize(a.out)
    if a.ensembles:
        return ensembles(a.out)
    if a.ab_ensembles:
        return ab_ensembles(a.out)
    if not (a.out / "d1.csv").exists():
        d1_sources(a.out, a.d1)
    for seed in a.seed or [0]:
        for variant in a.variant:
            train_variant(a.out, a.pbc6, variant, seed, extra, a.bccd)
            r = evaluate(a.out, variant, seed, stain=not a.no_stain, self_train=not a.no_self_train)
            print(json.dumps({k: r[k] for k in r if k not in ("flags",)}, indent=1, default=str)[:2000])
        if a.infomax:
            print(json.dumps(infomax_measures(a.out, a.infomax, seed, a.infomax_prior), indent=1)[:2000])
            if a.infomax_finetune:
                print(json.dumps(finetune_after_infomax(a.out, a.infomax, seed, prior=a.infomax_prior)))
        if a.finetune_curve:
            finetune_curve(a.out, a.finetune_curve, seed, tuple(a.curve_n) or CURVE_N, a.curve_select)


if __name__ == "__main__":
    main()
