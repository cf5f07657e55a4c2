"""The paper's whole study in one call: ``reproduce`` and ``demo``.

Stages (:data:`STAGES`; each writes its own output under ``OUT``)::

    split/              teacher.csv, inference.csv (held-out cells, smears), split.json
    dataset_A/          dataset ①, background removed          (datasets.build_dataset)
    dataset_B/          dataset ②, background kept
    dataset_inference/  the inference set (crop, resize, no augmentation)
    model_A/            WBC Model A (training.train, pretrained or scratch)
    model_B/            WBC Model B (fine-tuned from Model A)
    predictions_A.csv, predictions_B.csv (+ .json run files)     (predictor.predict)
    score_A/, score_B/, compare/                                 (scoring.score / compare)
    gradcam/            Grad-CAM of the disagreement examples    (gradcam.GradCAM)
    report.html, report.md, figures/, summary.json, config.json
    stages.json         what each stage was made from, digests of what it wrote

A stage is complete when its record in ``stages.json`` (:class:`StageRecords`)
says it finished from the same inputs: the source cells (resolved paths,
labels, smears, centres), the settings it depends on and the SHA-256 of
every file it reads, the images its CSVs list included (hashed once, cached in
``OUT/.file_digests.json`` by size and times). A re-run skips complete stages (an
interrupted run resumes, training from its last checkpoint) and runs again every
stage whose inputs changed, and so every stage after it. ``OUT`` must be new, empty or an
earlier ``reproduce`` output (its :data:`wbc_nnabla.outputs.OUTPUT_MARKER`);
inside it a stage replaces only what its own record says it wrote.

Presets (:data:`PRESETS`): ``paper`` is the paper's recipe (section II:
crop 750, train 480 / infer 320, totals 2,385 / 3,284, AdaBound, 300 + 300
epochs, ImageNet start when the weights file is present); ``recommended`` is
the same but infers at the training scale (see docs/method.md, "480/320");
``demo`` is scaled down so ``make demo`` finishes in minutes on 2 CPU cores.
``recommended`` also adapts each model to the inference cells (``adapt``: AdaBN and WBC
scale) before predicting, for cells from another lab (docs/cross_site.md); ``paper`` stays
faithful to the paper. The settings and presets are :mod:`wbc_nnabla.presets`; stage 0 is
:mod:`wbc_nnabla.split`; the stage records are :mod:`wbc_nnabla.stages`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from pathlib import Path
from typing import Dict, Optional

# Stages that import nnabla (models, training, inference, gradcam) are imported inside the
# functions that run them: the CLI builds its reproduce flags from Config without loading nnabla.
from . import classes, fileio, outputs
# The settings, stage 0 and the stage records live in modules of their own; their names stay importable here.
from .presets import PRESETS, Config, check_config, make_config, train_config  # noqa: F401
from .split import read_sources, split_source, write_split  # noqa: F401
from .stages import (COMMAND, RECORDS_FILE, STAGES, TABLES, Run, Stage, StageRecords, read_json,  # noqa: F401
                     table_digest, timer)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the run


def reproduce(source, out, preset: str = "paper", inference=None, config_file: Optional[str] = None,
              progress: bool = True, **overrides) -> dict:
    """Run the paper's study end to end (sections II-III) and write ``OUT/report.html``.

    source: labeled teacher cells (anything :func:`wbc_nnabla.fileio.read_cells` reads).
    out: a new or empty folder, or an earlier ``reproduce`` output: its complete
        stages are skipped, those whose inputs changed run again (see the module doc).
    inference: a labeled inference set; when None, a seeded stratified part of
        ``source`` is held out (see :func:`split_source`).
    preset: see :func:`make_config`.
    config_file: see :func:`make_config`.
    overrides: see :func:`make_config`.

    Returns the headline summary (also in ``OUT/summary.json``).
    """
    cfg = make_config(preset, config_file, **overrides)
    tables = read_sources(source, inference, cfg.dedupe)   # bad sources fail before OUT is made
    run = _open_run(Path(out), cfg, source, inference, progress)
    split = _split_stage(run, tables, source, inference)
    teacher, held = run.out / "split" / "teacher.csv", run.out / "split" / "inference.csv"
    _dataset_stage(run, "dataset_A", teacher, background="remove", size=cfg.train_size, total=cfg.total_a,
                   valid_fraction=cfg.valid_fraction)
    _dataset_stage(run, "dataset_B", teacher, background="keep", size=cfg.train_size, total=cfg.total_b,
                   valid_fraction=cfg.valid_fraction)
    _dataset_stage(run, "dataset_inference", held, background="keep", size=cfg.infer_size, inference=True)
    model_a = _train_stage(run, "train_A", run.out / "dataset_A", cfg.epochs_a, pretrained=_pretrained(cfg))
    model_b = _train_stage(run, "train_B", run.out / "dataset_B", cfg.epochs_b, init=model_a)
    preds = {"A": _predict_stage(run, "A", model_a), "B": _predict_stage(run, "B", model_b)}
    results, comparison = _score_stages(run, preds)
    cams = _gradcam_stage(run, _predicting_model(run, "B", model_b), preds["B"], results["B"])
    return _report_stage(run, split, results, comparison, cams)


def _open_run(out: Path, cfg: Config, source, inference, progress: bool) -> Run:
    """Check OUT, mark it as a reproduce output and save ``config.json``.

    OUT must be new, empty or an earlier reproduce output (its marker), hold
    no source and sit inside none; its completed stages must have been made
    with the same settings (:meth:`StageRecords.check_settings`).
    """
    sources = [source] + ([inference] if inference else [])
    outputs.check_not_inside(out, sources)
    for s in sources:
        if out.resolve() in Path(s).resolve().parents:
            raise fileio.SourceError(f"source {s} is inside the output folder {out}; choose another output "
                                 f"(reproduce replaces folders inside OUT, sources are never written)")
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and outputs.marker_command(out) != COMMAND:
            raise FileExistsError(f"{out}: not empty and not a reproduce output (no {outputs.OUTPUT_MARKER} naming "
                                  f"reproduce); nothing was written: use a new or empty output folder")
    records = StageRecords(out)
    records.check_settings(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if outputs.marker_command(out) != COMMAND:
        outputs.write_marker(out, COMMAND)
    outputs.write_json(out / "config.json", dict(config=dataclasses.asdict(cfg), source=str(source),
                                            inference=str(inference) if inference else None,
                                            environment=outputs.environment()))
    return Run(out, cfg, records, progress)


def _split_stage(run: Run, tables: tuple, source, inference) -> dict:
    """Stage 0 (:func:`split_source`) unless its record says it split these very cells; returns ``split.json``.

    tables: ``(teacher table, inference table or None)`` of :func:`read_sources`.
    """
    stage = STAGES["split"]
    table, held = tables
    images = run.records.files.files        # the bytes of the images (read for copies under other names)
    made_from = run.made_from(stage, {"source cells": table_digest(table), "source images": images(table["path"]),
                                      "inference cells": None if held is None else table_digest(held),
                                      "inference images": None if held is None else images(held["path"])})
    if not run.is_complete(stage, made_from):
        with run.recording(stage, made_from):
            write_split(table, held, run.out / "split", run.cfg, source, inference, overwrite=True)
    return read_json(run.out / "split" / "split.json")


def _dataset_stage(run: Run, name: str, cells: Path, **build) -> None:
    """Build dataset ``name`` from a split CSV (:func:`wbc_nnabla.datasets.build_dataset`) unless it is complete."""
    from . import datasets
    stage = STAGES[name]
    made_from = run.made_from(stage, dict(run.digests([cells]), images=run.images(cells)))
    if run.is_complete(stage, made_from):
        return
    with run.recording(stage, made_from):
        folder = datasets.build_dataset(cells, run.out / name, crop=run.cfg.crop, seed=run.cfg.seed,
                                        skip_bad=run.cfg.skip_bad, overwrite=True, progress=run.progress, **build)
    skipped = read_json(folder / "build_report.json").get("skipped", [])
    if skipped:
        log.warning("%s: skipped %d bad image(s) (--skip-bad), listed in %s", stage.label, len(skipped),
                    folder / "build_report.md")


def _pretrained(cfg: Config) -> str:
    """Model A's start: ``cfg.pretrained``, with ``auto`` resolved to the ImageNet weights file or ``none``."""
    if cfg.pretrained != "auto":
        return cfg.pretrained
    from . import pretrained
    try:
        return str(pretrained.find_pretrained("imagenet", cfg.arch))
    except pretrained.PretrainedError as e:  # no file: the paper's ImageNet start is not possible here
        log.warning("ImageNet weights not found, so Model A trains from scratch: %s", e)
        return "none"


def _train_stage(run: Run, name: str, dataset: Path, epochs: int, pretrained: str = "none",
                 init: Optional[Path] = None) -> Path:
    """Train a model (:func:`wbc_nnabla.training.train`) unless its record is complete; returns its ``model.nnp``.

    A run started from the same inputs resumes from its last checkpoint; any
    other earlier output of this stage is replaced.
    """
    from . import training
    stage, cfg = STAGES[name], run.cfg
    folder = run.out / stage.outputs[0]
    inputs = run.digests([dataset / t for t in TABLES] + ([init] if init else []))
    inputs["dataset"] = run.dataset(dataset)             # train.csv, valid.csv and the bytes of their images
    inputs["pretrained"] = pretrained if not Path(pretrained).is_file() else \
        f"{pretrained} sha256:{run.records.digest(Path(pretrained).resolve())}"
    made_from = run.made_from(stage, inputs)
    if run.is_complete(stage, made_from):
        return folder / "model.nnp"
    resume = run.records.started_from(stage, made_from) and (folder / "checkpoint.json").is_file()
    with run.recording(stage, made_from):
        if folder.exists() and not resume:
            shutil.rmtree(folder)  # this stage's own earlier output: is_complete checked its record
        training.train(dataset, folder, train_config(cfg, epochs, pretrained, init, run.progress), resume=resume)
    return folder / "model.nnp"


def _predict_stage(run: Run, tag: str, model: Path) -> Path:
    """Model ``tag``'s predictions on the inference set (:func:`wbc_nnabla.predictor.predict`) unless complete."""
    from . import predictions, predictor as infer
    stage = STAGES[f"predict_{tag}"]
    path = run.out / stage.outputs[0]
    cells = run.out / "dataset_inference" / "cells.csv"
    made_from = run.made_from(stage, dict(run.digests([model, cells, cells.with_name("manifest.csv")]),
                                          images=run.images(cells)))
    if not run.is_complete(stage, made_from):
        with run.recording(stage, made_from):
            if run.cfg.adapt:
                model = _adapt(model, cells, run.out / stage.outputs[1], run.cfg)
            result = infer.predict_run(model, cells, size=run.cfg.infer_size, batch_size=run.cfg.batch_size,
                                       backend=run.cfg.backend, expected_classes=classes.CLASSES6,
                                       progress=run.progress, tta=run.cfg.tta, precision=run.cfg.precision)
            # the CSV and its run JSON (as `wbc-nnabla predict` writes them, so `score --pending-threshold
            # model` reads the model's calibration cells); an earlier CSV here is this stage's own, left by
            # a run stopped before its record was finished (is_complete checked the record)
            predictions.write_predictions(result.table, path, overwrite=True,
                                          config=infer.run_config(result, model, cells))
    return path


def _predicting_model(run: Run, tag: str, model: Path) -> Path:
    """The model whose calls ``predictions_TAG.csv`` holds: with ``adapt``, the one :func:`_adapt` wrote
    (what Grad-CAM must explain for its calls to be the predictions'), else ``model``."""
    adapted = run.out / STAGES[f"predict_{tag}"].outputs[1]
    return adapted if run.cfg.adapt and adapted.is_file() else model


def _adapt(model: Path, cells: Path, out: Path, cfg: Config) -> Path:
    """``model`` adapted to the inference cells at the inference size (:func:`wbc_nnabla.sites.adaptation.adapt_batchnorm`),
    or ``model`` itself when it has no BatchNorm (GroupNorm: logged)."""
    from . import modelfile
    from .sites import adaptation
    if not adaptation.bn_statistics(modelfile.load_parameters(model)):
        log.info("%s has no BatchNorm statistics: predicting without adaptation", model)
        return model
    if out.exists():
        out.unlink()            # this stage's own earlier output: is_complete checked its record
    adaptation.adapt_batchnorm(model, cells, out, size=cfg.infer_size, seed=cfg.seed)
    return out


def _score_stages(run: Run, preds: Dict[str, Path]):
    """Score both models and compare them (:mod:`wbc_nnabla.scoring`); write the folders that are not complete.

    Returns ``({"A": ScoreResult, "B": ScoreResult}, CompareResult)``, computed on every run (the report needs them).
    """
    from . import report, scoring
    results = {}
    for tag, path in preds.items():
        results[tag] = scoring.score(path, pending_threshold=run.cfg.pending_threshold,
                                     target_accuracy=run.cfg.target_accuracy)
        stage = STAGES[f"score_{tag}"]
        made_from = run.made_from(stage, run.digests([path]))
        if not run.is_complete(stage, made_from):
            with run.recording(stage, made_from):
                report.write_score(results[tag], run.out / stage.outputs[0], overwrite=True)
    comparison = _compare(results, run.cfg)
    stage = STAGES["compare"]
    made_from = run.made_from(stage, run.digests(preds.values()))
    if not run.is_complete(stage, made_from):
        with run.recording(stage, made_from):
            report.write_compare(comparison, run.out / stage.outputs[0], overwrite=True)
    return results, comparison


def _gradcam_stage(run: Run, model: Path, preds: Path, result) -> list:
    """Grad-CAM of Model B's disagreements (:func:`_gradcam_examples`), on every run; returns the examples."""
    stage = STAGES["gradcam"]
    with run.recording(stage, run.made_from(stage, run.digests([model, preds]))):
        return _gradcam_examples(model, result, run.out / stage.outputs[0], run.cfg)


def _report_stage(run: Run, split: dict, results: dict, comparison, cams: list) -> dict:
    """``summary.json``, ``report.html``/``.md`` and ``figures/`` on every run; marks ``config.json`` finished."""
    from . import reproduce_report
    summary = _headline(run.cfg, split, results, comparison, dict(run.timings), time.perf_counter() - run.t0)
    stage = STAGES["report"]
    with run.recording(stage, run.made_from(stage, {})):
        shutil.rmtree(run.out / "figures", ignore_errors=True)  # an earlier report's figures (record checked)
        outputs.write_json(run.out / "summary.json", summary)
        reproduce_report.write_reproduce_report(run.out, dataclasses.asdict(run.cfg), split, results["A"],
                                                results["B"], comparison, cams, summary)
    state = read_json(run.out / "config.json")
    state["finished"] = True
    outputs.write_json(run.out / "config.json", state)
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
    ``folder`` is replaced as a whole (removed when there is no disagreement).
    """
    from . import gradcam
    cells = result.cells
    wrong = cells[(cells["true6"] != "") & (cells["true6"] != cells["pred6"])]
    # the most confident disagreements first (then by path): independent of the CSV's row order
    wrong = wrong.sort_values(["top6", "path"], ascending=[False, True], kind="stable").head(cfg.gradcam_examples)
    if wrong.empty:
        shutil.rmtree(folder, ignore_errors=True)
        return []
    explainer = gradcam.GradCAM(model, size=cfg.infer_size)
    paths = list(wrong["path"])
    with outputs.atomic_dir(folder, overwrite=True) as tmp:
        # small inference crops (e.g. the demo's 48 px) are enlarged to 192 px for viewing
        written = gradcam.write_overlays(explainer, paths, tmp, stems=[Path(p).stem for p in paths],
                                         side_by_side=True, min_side=192, cams=False)
    return [dict(path=str(folder / w["overlay"]), cell=str(p), human=h, ai=a)
            for w, p, h, a in zip(written, paths, wrong["true6"], wrong["pred6"])]


def _headline(cfg, split, results, comparison, timings, seconds) -> dict:
    s = {"preset": cfg.preset, "seconds": round(seconds, 1), "timings": timings,
         "n_inference_cells": split.get("n_inference"), "n_smears": split.get("n_smears")}
    for name, r in results.items():
        for k in ("accuracy6_mean", "accuracy6_sd", "accuracy5_mean", "accuracy5_sd",
                  "accuracy6_pooled", "accuracy5_pooled", "best_smear", "worst_smear", "coverage"):
            s[f"{k}_{name}"] = r.summary.get(k)
    s.update({k: comparison.summary.get(k) for k in ("p_ranksum5", "p_ranksum6", "p_signedrank5", "p_signedrank6",
                                                   "mean_diff5", "mean_diff6")})
    return s


def demo(out="out/demo", progress: bool = True, config_file: Optional[str] = None, **overrides) -> dict:
    """``reproduce`` on the embedded demo cells with the ``demo`` preset (what ``make demo`` runs).

    The cells are ``fileio.demo_data("small")``: the PBC cells framed and resized for a short CPU run
    (the ``demo`` preset's crop takes each image whole); the 120 full-size cells of ``demo_data()``
    are the tests'.
    """
    return reproduce(fileio.demo_data("small"), out, preset="demo", config_file=config_file, progress=progress,
                     **overrides)
