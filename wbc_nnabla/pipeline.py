"""The paper's whole study in one call: ``reproduce`` and ``demo``.

Stages (each writes its own folder under ``OUT``; a stage whose output is
complete is skipped on a re-run, so an interrupted run resumes)::

    split/              teacher.csv, inference.csv (held-out cells, smears), split.json
    dataset_A/          dataset ①, background removed          (datasets.build_dataset)
    dataset_B/          dataset ②, background kept
    dataset_inference/  the inference set (crop, resize, no augmentation)
    model_A/            WBC Model A (training.train, pretrained or scratch)
    model_B/            WBC Model B (fine-tuned from Model A)
    predictions_A.csv, predictions_B.csv                         (inference.predict)
    score_A/, score_B/, compare/                                 (scoring.score / compare)
    gradcam/            Grad-CAM of the disagreement examples    (gradcam.GradCAM)
    report.html, report.md, config.json

Presets (:data:`PRESETS`): ``paper`` is the paper's recipe (section II:
crop 750, train 480 / infer 320, totals 2,385 / 3,284, AdaBound, 300 + 300
epochs, ImageNet start when the weights file is present); ``recommended`` is
the same but infers at the training scale (see docs/method.md, "480/320");
``demo`` is scaled down so ``make demo`` finishes in minutes on 2 CPU cores.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np

# Stages that import nnabla (models, training, inference, gradcam) are imported inside the
# functions that run them: the CLI builds its reproduce flags from Config without loading nnabla.
from . import classes, io, sampling
from .recipe import (ARCH_NAMES, BACKEND_NAMES, BATCH_SIZE, BN_RECALIBRATION_IMAGES, CONTEXT_NAMES, PAPER,
                     TrainConfig, setting)

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Config:
    """Every setting of a reproduction run (units: pixels, epochs, images).

    Each field but ``preset`` is also a ``reproduce``/``demo`` flag (:func:`wbc_nnabla.recipe.setting`:
    its help text is the field's documentation).
    """

    preset: str = "paper"
    crop: int = setting(PAPER.crop, f"crop side in pixels around each cell (paper: {PAPER.crop})")
    train_size: int = setting(PAPER.train_size, f"training input side in pixels (paper: {PAPER.train_size})")
    infer_size: int = setting(PAPER.infer_size, f"inference input side in pixels (paper: {PAPER.infer_size})")
    total_a: int = setting(PAPER.total_a, f"images in dataset ① after balancing (paper: {PAPER.total_a})")
    total_b: int = setting(PAPER.total_b, f"images in dataset ② after balancing (paper: {PAPER.total_b})")
    epochs_a: int = setting(PAPER.epochs, f"epochs of Model A (paper: {PAPER.epochs})")
    epochs_b: int = setting(PAPER.epochs, f"epochs of Model B (paper: {PAPER.epochs})")
    batch_size: int = setting(BATCH_SIZE, "images per iteration")
    train_eval_limit: Optional[int] = setting(
        None, "Training Error over a seeded class-stratified sample of N training images (default: all, as NNC)")
    bn_recalibration: int = setting(
        BN_RECALIBRATION_IMAGES, metavar="N",
        help=f"re-estimate BatchNorm statistics on N clean training images (default {BN_RECALIBRATION_IMAGES}; "
             f"0: as NNC)")
    arch: str = setting(PAPER.arch, f"network (paper: {PAPER.arch})", choices=ARCH_NAMES)
    pretrained: str = setting("auto", "auto (ImageNet when the weights file is present), imagenet, none or a file")
    valid_fraction: float = setting(0.2, "validation share of the teacher cells")
    inference_fraction: float = setting(0.2, "share of SOURCE held out as the inference set")
    pseudo_smears: Optional[int] = setting(None, "group held-out cells without smear ids into N smears")
    cells_per_smear: Optional[int] = setting(None, "cells per pseudo-smear")
    seed: int = setting(0, "seed of every random choice")
    backend: str = setting("auto", "inference backend", choices=BACKEND_NAMES)
    context: str = setting("cpu", "nnabla context for training", choices=CONTEXT_NAMES)
    pending_threshold: Optional[float] = setting(None, "judgement-pending cut-off on the top probability")
    target_accuracy: float = setting(0.99, "accuracy the pending cut-off is calibrated to")
    gradcam_examples: int = setting(8, "disagreeing cells shown with Grad-CAM")


PRESETS: Dict[str, dict] = {
    "paper": {},
    "recommended": dict(infer_size=PAPER.train_size),
    "demo": dict(crop=360, train_size=48, infer_size=48, total_a=360, total_b=360, epochs_a=5, epochs_b=3,
                 batch_size=16, train_eval_limit=96, pretrained="none", inference_fraction=1 / 3,
                 pseudo_smears=4, cells_per_smear=10, gradcam_examples=6),
}


def make_config(preset: str = "paper", config_file: Optional[str] = None, **overrides) -> Config:
    """The effective configuration: preset, then a JSON config file, then explicit overrides (not None)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset], preset=preset)
    if config_file:
        try:
            loaded = json.loads(Path(config_file).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{config_file}: not a readable JSON config ({e})") from None
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    names = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    return Config(**values)


# ----------------------------------------------------------------------------- stage 0: split


def split_source(source, out_dir, cfg: Config, inference=None) -> dict:
    """Stage 0: teacher cells and the labeled inference set, with smear ids.

    With ``inference`` given, SOURCE is all teacher data. Otherwise a seeded,
    class-stratified part of SOURCE is held out (``inference_fraction``, or
    ``pseudo_smears * cells_per_smear`` cells when both are set) and never
    enters training. Held-out cells without a ``smear`` are grouped into
    ``pseudo_smears`` stand-in smears of ``cells_per_smear`` cells (seeded).
    Writes ``teacher.csv`` and ``inference.csv`` (``path,label,smear``) and ``split.json``.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    table = io.read_cells(source)
    if (table["label"] == "").any():
        bad = table.loc[table["label"] == "", "source"].iloc[0]
        raise ValueError(f"{bad}: teacher cells need a label")
    want_pseudo = cfg.pseudo_smears is not None and cfg.cells_per_smear is not None
    if inference is not None:
        teacher, held = table, io.read_cells(inference)
        note = f"inference set: {inference}"
    else:
        n = cfg.pseudo_smears * cfg.cells_per_smear if want_pseudo else int(round(cfg.inference_fraction * len(table)))
        if not 0 < n < len(table):
            raise ValueError(f"cannot hold out {n} of {len(table)} cells for inference; adjust "
                             f"--inference-fraction or --pseudo-smears/--cells-per-smear")
        pick = sampling.stratified_pick(table["label"], n, rng)
        held = table.iloc[pick].reset_index(drop=True)
        teacher = table.drop(index=table.index[pick]).reset_index(drop=True)
        note = f"{len(held)} cells held out of {source} (seed {cfg.seed}, stratified by class)"
    if (held["smear"] == "").all():
        if want_pseudo:
            order = rng.permutation(len(held))
            smear = np.empty(len(held), dtype=object)
            smear[order] = [f"P{i // cfg.cells_per_smear + 1:02d}" for i in range(len(held))]
            held["smear"] = smear
            note += (f"; no smear ids, so the held-out cells form {cfg.pseudo_smears} pseudo-smears of "
                     f"{cfg.cells_per_smear} cells (seeded) that stand in for the paper's smears")
        else:
            note += "; no smear ids: all inference cells are scored as one smear"
    columns = ["path", "label", "smear"]
    with io.atomic_dir(out_dir, overwrite=True) as tmp:
        teacher[columns].to_csv(tmp / "teacher.csv", index=False)
        held[columns].to_csv(tmp / "inference.csv", index=False)
        info = dict(source=str(source), inference=str(inference) if inference else None,
                    n_teacher=len(teacher), n_inference=len(held),
                    n_smears=int(held["smear"].replace("", "(all)").nunique()), note=note,
                    teacher_counts=teacher["label"].value_counts().sort_index().to_dict(),
                    inference_counts=held["label"].value_counts().sort_index().to_dict())
        io.write_json(tmp / "split.json", info)
    return info


# ----------------------------------------------------------------------------- the run


def _pretrained(cfg: Config) -> str:
    if cfg.pretrained != "auto":
        return cfg.pretrained
    from . import pretrained
    try:
        return str(pretrained.find_pretrained("imagenet", cfg.arch))
    except pretrained.PretrainedError as e:  # no file: the paper's ImageNet start is not possible here
        log.warning("ImageNet weights not found, so Model A trains from scratch: %s", e)
        return "none"


def _train(dataset, out, cfg: Config, epochs: int, pretrained: str = "none", init=None,
           progress: bool = True) -> Path:
    from . import training
    out = Path(out)
    model = out / "model.nnp"
    state = _read_json(out / "config.json")
    done = len(state.get("history", [])) >= state.get("config", {}).get("epochs", float("inf"))
    if model.is_file() and done:
        log.info("skip: %s is complete", out)
        return model
    resume = (out / "checkpoint.json").is_file()
    training.train(dataset, out, TrainConfig(
        epochs=epochs, batch_size=cfg.batch_size, size=cfg.train_size, seed=cfg.seed, pretrained=pretrained,
        init=init, arch=cfg.arch, context=cfg.context, train_eval_limit=cfg.train_eval_limit, progress=progress,
        bn_recalibration=cfg.bn_recalibration), resume=resume)
    return model


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _stage(name: str, done: bool):
    log.info("%s %s", "skip (complete):" if done else "run:", name)
    return not done


def reproduce(source, out, preset: str = "paper", inference=None, config_file: Optional[str] = None,
              progress: bool = True, **overrides) -> dict:
    """Run the paper's study end to end (sections II-III) and write ``OUT/report.html``.

    source: labeled teacher cells (anything :func:`wbc_nnabla.io.read_cells` reads).
    inference: a labeled inference set; when None, a seeded stratified part of
        ``source`` is held out (see :func:`split_source`).
    preset / config_file / overrides: see :func:`make_config`.
    Returns the headline summary (also in ``OUT/summary.json``).
    """
    from . import datasets, inference as infer, predictions, report, reproduce_report, scoring
    out = Path(out)
    cfg = make_config(preset, config_file, **overrides)
    io.check_not_inside(out, [source] + ([inference] if inference else []))
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_json(out / "config.json").get("config")
    if previous and previous != dataclasses.asdict(cfg):
        raise ValueError(f"{out} holds a run with another configuration ({out / 'config.json'}); "
                         f"use a new output folder")
    io.write_json(out / "config.json", dict(config=dataclasses.asdict(cfg), source=str(source),
                                            inference=str(inference) if inference else None,
                                            environment=io.environment()))
    t0 = time.perf_counter()
    timings = {}

    def timed(name, fn, *a, **k):
        t = time.perf_counter()
        r = fn(*a, **k)
        timings[name] = round(time.perf_counter() - t, 1)
        return r

    if _stage("split", (out / "split" / "split.json").is_file()):
        timed("split", split_source, source, out / "split", cfg, inference)
    split = _read_json(out / "split" / "split.json")
    teacher, held = out / "split" / "teacher.csv", out / "split" / "inference.csv"

    common = dict(crop=cfg.crop, valid_fraction=cfg.valid_fraction, seed=cfg.seed, progress=progress)
    if _stage("dataset ①", (out / "dataset_A").is_dir()):
        timed("dataset_A", datasets.build_dataset, teacher, out / "dataset_A", background="remove",
              size=cfg.train_size, total=cfg.total_a, **common)
    if _stage("dataset ②", (out / "dataset_B").is_dir()):
        timed("dataset_B", datasets.build_dataset, teacher, out / "dataset_B", background="keep",
              size=cfg.train_size, total=cfg.total_b, **common)
    if _stage("inference set", (out / "dataset_inference").is_dir()):
        timed("dataset_inference", datasets.build_dataset, held, out / "dataset_inference", background="keep",
              size=cfg.infer_size, inference=True, crop=cfg.crop, seed=cfg.seed, progress=progress)

    model_a = timed("train_A", _train, out / "dataset_A", out / "model_A", cfg, cfg.epochs_a,
                    pretrained=_pretrained(cfg), progress=progress)
    model_b = timed("train_B", _train, out / "dataset_B", out / "model_B", cfg, cfg.epochs_b, init=model_a,
                    progress=progress)

    preds = {}
    for name, model in (("A", model_a), ("B", model_b)):
        path = out / f"predictions_{name}.csv"
        if _stage(f"predict {name}", path.is_file()):
            df = timed(f"predict_{name}", infer.predict, model, out / "dataset_inference" / "cells.csv",
                       size=cfg.infer_size, batch_size=cfg.batch_size, backend=cfg.backend,
                       expected_classes=classes.CLASSES6, progress=progress)
            predictions.write_predictions(df, path)
        preds[name] = path

    results = {}
    for name in ("A", "B"):
        results[name] = scoring.score(preds[name], pending_threshold=cfg.pending_threshold,
                                      target_accuracy=cfg.target_accuracy)
        if _stage(f"score {name}", (out / f"score_{name}" / "summary.json").is_file()):
            report.write_score(results[name], out / f"score_{name}", overwrite=True)
    comparison = _compare(results, cfg)
    if _stage("compare", (out / "compare" / "comparison.json").is_file()):
        report.write_compare(comparison, out / "compare", overwrite=True)

    cams = timed("gradcam", _gradcam_examples, model_b, results["B"], out / "gradcam", cfg)
    summary = _summary(cfg, split, results, comparison, timings, time.perf_counter() - t0)
    io.write_json(out / "summary.json", summary)
    reproduce_report.write_reproduce_report(out, dataclasses.asdict(cfg), split, results["A"], results["B"],
                                            comparison, cams, summary)
    state = _read_json(out / "config.json")
    state["finished"] = True
    io.write_json(out / "config.json", state)
    return summary


def _compare(results: dict, cfg: Config):
    """Model A vs Model B (Fig. 9) on the cells ``score()`` already read and checked (not the CSVs again).

    Each model is scored again without the target accuracy, so ``compare/A`` and
    ``compare/B`` hold the plain score tables.
    """
    from . import scoring
    a, b = (scoring.score(results[k].cells, pending_threshold=cfg.pending_threshold) for k in ("A", "B"))
    return scoring.compare(a, b)


def _gradcam_examples(model, result, folder: Path, cfg: Config) -> list:
    """Grad-CAM overlays of up to ``cfg.gradcam_examples`` disagreeing cells of Model B (Fig. 10 + discussion).

    The most confident disagreements are shown (highest ``top6`` first, then by path).
    """
    from . import gradcam
    cells = result.cells
    wrong = cells[(cells["true6"] != "") & (cells["true6"] != cells["pred6"])]
    # the most confident disagreements first (then by path): independent of the CSV's row order
    wrong = wrong.sort_values(["top6", "path"], ascending=[False, True], kind="stable").head(cfg.gradcam_examples)
    if wrong.empty:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    explainer = gradcam.GradCAM(model, size=cfg.infer_size)
    images = [io.read_rgb(p) for p in wrong["path"]]
    found = explainer.explain(images)
    out = []
    for (_, row), img, res in zip(wrong.iterrows(), images, found):
        path = folder / f"{Path(row['path']).stem}_gradcam.png"
        cam = res.cam
        if img.shape[0] < 192:  # small inference crops (e.g. the demo's 48 px) are enlarged for viewing
            img, cam = io.resize_square(img, 192), io.resize_square(cam, 192)
        io.write_image(path, np.hstack([img, gradcam.overlay(img, cam)]))
        out.append(dict(path=str(path), cell=str(row["path"]), human=row["true6"], ai=row["pred6"]))
    return out


def _summary(cfg, split, results, comparison, timings, seconds) -> dict:
    s = {"preset": cfg.preset, "seconds": round(seconds, 1), "timings": timings,
         "n_inference_cells": split.get("n_inference"), "n_smears": split.get("n_smears")}
    for name, r in results.items():
        for k in ("accuracy6_mean", "accuracy6_sd", "accuracy5_mean", "accuracy5_sd",
                  "accuracy6_pooled", "accuracy5_pooled", "best_smear", "worst_smear", "coverage"):
            s[f"{k}_{name}"] = r.summary.get(k)
    s.update({k: comparison.summary.get(k) for k in ("p_ranksum5", "p_ranksum6", "p_signedrank5", "p_signedrank6",
                                                   "mean_diff5", "mean_diff6")})
    return s


def demo(out="out/demo", progress: bool = True, **overrides) -> dict:
    """``reproduce`` on the embedded demo cells with the ``demo`` preset (what ``make demo`` runs)."""
    return reproduce(io.demo_data(), out, preset="demo", progress=progress, **overrides)
