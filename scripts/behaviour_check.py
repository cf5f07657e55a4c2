"""Run every command on the embedded demo cells and record what each wrote: the proof that a re-cut
changed no behaviour.

    python scripts/behaviour_check.py run OUT_DIR            # every command, tiny settings, into OUT_DIR
    python scripts/behaviour_check.py manifest OUT_DIR       # sha256 of every output file -> OUT_DIR/manifest.json
    python scripts/behaviour_check.py compare BEFORE AFTER [ROOT_BEFORE ROOT_AFTER]   # the files that differ

ROOT_BEFORE and ROOT_AFTER: the two checkouts' folders, which the outputs name (the embedded demo cells
lie inside the package); each is read as ``ROOT``.

Run it with the same OUT_DIR path before and after a change (outputs record absolute paths), from
each checkout's own ``.venv``. ``compare`` hashes JSON files twice: as written, and without the
keys that hold a run's time, machine or package version (``VOLATILE``); every text file (and the
members of a ``.nnp``) with durations replaced by ``T`` and the checkout's folder by ``ROOT``.
Figures (PNG) and parameters are compared byte for byte.
Everything goes through the ``wbc-nnabla`` command a user runs; nothing private is called.
"""
import csv
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "wbc_nnabla.cli"]
#: Learning-curve columns that hold durations (``learning_curve.csv``).
TIMED_COLUMNS = {"seconds", "images_per_s", "outside_share"}
#: JSON keys whose values are a run's clock, machine, versions or durations.
VOLATILE = {"environment", "seconds", "created", "started", "finished", "elapsed", "time", "duration",
            "images_per_s", "outside_share", "wall_seconds", "timings", "version", "package_version",
            "wbc_nnabla_version", "date", "model_sha256", "source_sha256", "cells_sha256"}


def _demo() -> Path:
    out = subprocess.run([sys.executable, "-c", "from wbc_nnabla import fileio; print(fileio.demo_data())"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def commands(w: Path, demo: Path, bccd: Path):
    """(name, argv) of every command, tiny settings, each reading the outputs of those before it."""
    tiny = ["--size", "32", "--batch-size", "8", "--pretrained", "none", "--no-progress"]
    yield "classes", ["classes"]
    yield "cells", ["cells", str(demo)]
    yield "segment", ["segment", str(demo / "Band"), str(demo / "Mono"), "--out", str(w / "seg"), "--gallery", "8"]
    if bccd.is_dir():
        fields = sorted((bccd / "JPEGImages").glob("*.jpg"))[:3]
        yield "locate", ["locate", *map(str, fields), "--out", str(w / "locate.csv")]
    yield "build-A", ["build-dataset", str(demo), str(w / "dsA"), "--background", "remove", "--size", "32",
                      "--total", "120", "--no-progress"]
    yield "build-B", ["build-dataset", str(demo), str(w / "dsB"), "--background", "keep", "--size", "40",
                      "--total", "144", "--seed", "1", "--no-progress"]
    yield "build-inf", ["build-dataset", str(demo), str(w / "dsI"), "--inference", "--size", "32", "--no-progress"]
    yield "train-A", ["train", str(w / "dsA"), str(w / "A"), "--epochs", "2", *tiny]
    yield "train-B", ["train", str(w / "dsB"), str(w / "B"), "--epochs", "1", "--init", str(w / "A/model.nnp"),
                      "--size", "32", "--batch-size", "8", "--no-progress"]
    yield "train-robust", ["train", str(w / "dsB"), str(w / "R"), "--epochs", "1", "--recipe", "robust", *tiny]
    cells = str(w / "dsI" / "cells.csv")
    for name, model in (("A", "A/model.nnp"), ("B", "B/model.nnp")):
        yield f"predict-{name}", ["predict", str(w / model), cells, str(w / f"pred{name}.csv"), "--backend", "nnabla",
                                  "--no-progress"]
    yield "predict-A-onnx", ["predict", str(w / "A/model.nnp"), cells, str(w / "predA_ort.csv"), "--backend",
                             "onnxruntime", "--no-progress"]
    yield "predict-A-tta-prior", ["predict", str(w / "A/model.nnp"), cells, str(w / "predA_tta.csv"), "--backend",
                                  "nnabla", "--tta", "--prior", "normal", "--no-progress"]
    yield "predict-A-stain", ["predict", str(w / "A/model.nnp"), cells, str(w / "predA_stain.csv"), "--backend",
                              "nnabla", "--stain", "white-balance", "--stain-reference", str(w / "dsA" / "train.csv"), "--no-progress"]
    yield "export", ["export", str(w / "A/model.nnp"), "--onnx", str(w / "A.onnx")]
    yield "ensemble", ["ensemble", str(w / "predA.csv"), str(w / "predB.csv"), str(w / "ens.csv")]
    yield "adapt", ["adapt", str(w / "A/model.nnp"), str(demo), str(w / "A_site.nnp"), "--seed", "0"]
    yield "adapt-noscale", ["adapt", str(w / "A/model.nnp"), str(demo), str(w / "A_adabn.nnp"), "--no-scale"]
    yield "predict-site", ["predict", str(w / "A_site.nnp"), cells, str(w / "pred_site.csv"), "--backend", "nnabla",
                           "--no-progress"]
    yield "infomax", ["infomax", str(w / "A_site.nnp"), str(demo), str(w / "A_im.nnp"), "--iterations", "3",
                      "--batch-size", "8", "--no-progress"]
    yield "finetune", ["finetune", str(w / "A_site.nnp"), str(w / "dsI" / "cells.csv"), str(w / "A_ft.nnp"),
                       "--iterations", "3", "--batch-size", "8", "--no-progress"]
    yield "self-train", ["self-train", str(w / "A_site.nnp"), str(demo), str(w / "A_st.nnp"), "--iterations", "2",
                         "--rounds", "1", "--batch-size", "8", "--no-progress"]
    yield "domain-reference", ["domain-reference", str(w / "A/model.nnp"), str(w / "dsA"), str(w / "A_ref.nnp")]
    yield "score", ["score", str(w / "predA.csv"), str(w / "scoreA"), "--pending-threshold", "model"]
    yield "score-B", ["score", str(w / "predB.csv"), str(w / "scoreB"), "--pending-threshold", "0.5"]
    yield "compare", ["compare", str(w / "predA.csv"), str(w / "predB.csv"), str(w / "cmp")]
    yield "gradcam", ["gradcam", str(w / "A/model.nnp"), str(demo / "Band"), "--out", str(w / "cams")]


def run(w: Path) -> int:
    w.mkdir(parents=True, exist_ok=False)
    demo = _demo()
    bccd = Path(os.environ.get("WBC_SHARED_DATA", ROOT.parent / "shared" / "data")) / "bccd-fields"
    log = {}
    for name, argv in commands(w, demo, bccd):
        p = subprocess.run(CLI + argv, capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
        log[name] = dict(argv=argv, returncode=p.returncode, stdout=p.stdout)
        print(f"{name}: exit {p.returncode}", flush=True)
        if p.returncode:
            print(p.stderr[-2000:], file=sys.stderr)
    (w / "commands.json").write_text(json.dumps(log, indent=1, sort_keys=True))
    return 0


def _strip(obj):
    # a .nnp's digest changes with its zip members' timestamps: its content is compared on its own
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE and not str(k).endswith(".nnp")}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _normal_text(text: str, root: str = "") -> str:
    """Text without a run's durations and rates, and with the checkout's folder as ``ROOT``."""
    if root:
        text = text.replace(root.rstrip("/") + "/", "ROOT/")
    return re.sub(r"\d+(\.\d+)? ?(s|cells/s)\b", "T", text)


TEXT = {".csv", ".json", ".md", ".html", ".txt", ".nntxt"}


def _content(name: str, data: bytes, root: str):
    """What of a file is behaviour (None: its bytes): a text without durations and with the checkout's folder
    as ROOT, a JSON without :data:`VOLATILE` keys, a zip's (``.nnp``) members without their timestamps, a
    learning curve without its durations."""
    suffix = Path(name).suffix
    if suffix == ".onnx":
        import onnx
        model = onnx.load_from_string(data)
        meta = {m.key: _content(m.key + ".json", m.value.encode(), root) if m.value.startswith("{") else m.value
                for m in model.metadata_props}
        return model.graph.SerializeToString() + repr(sorted(meta.items())).encode()
    if suffix == ".nnp" and zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return b"".join(m.encode() + hashlib.sha256(_content(m, z.read(m), root) or z.read(m)).digest()
                            for m in sorted(z.namelist()))
    if suffix not in TEXT:
        return None
    text = _normal_text(data.decode("utf-8", errors="replace"), root)
    if Path(name).name == "learning_curve.csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return json.dumps([{k: v for k, v in r.items() if k not in TIMED_COLUMNS} for r in rows]).encode()
    if suffix == ".json":
        try:
            return json.dumps(_strip(json.loads(text)), sort_keys=True).encode()
        except ValueError:
            pass
    return text.encode()


def manifest(w: Path, root: str = "") -> dict:
    files = {}
    for p in sorted(w.rglob("*")):
        if not p.is_file() or p.name == "manifest.json":
            continue
        data = p.read_bytes()
        entry = dict(sha256=hashlib.sha256(data).hexdigest())
        content = _content(p.name, data, root)
        if content is not None:
            entry["normalised"] = hashlib.sha256(content).hexdigest()
        files[str(p.relative_to(w))] = entry
    (w / "manifest.json").write_text(json.dumps(files, indent=1, sort_keys=True))
    return files


def compare(before: Path, after: Path, roots=("", "")) -> int:
    a, b = manifest(before, roots[0]), manifest(after, roots[1])
    same = sorted(k for k in a if k in b and a[k]["sha256"] == b[k]["sha256"])
    normal = sorted(k for k in a if k in b and k not in same and a[k].get("normalised")
                    and a[k].get("normalised") == b[k].get("normalised"))
    differ = sorted(k for k in a if k in b and k not in same and k not in normal)
    print(f"{len(same)} files byte-identical; {len(normal)} identical but for run time/machine keys; "
          f"{len(differ)} differ; {len(set(a) - set(b))} only before; {len(set(b) - set(a))} only after")
    for title, names in (("identical but for volatile keys", normal), ("differ", differ),
                         ("only before", sorted(set(a) - set(b))), ("only after", sorted(set(b) - set(a)))):
        for k in names:
            print(f"  {title}: {k}")
    return 0 if not differ and set(a) == set(b) else 1


if __name__ == "__main__":
    verb, *paths = sys.argv[1:]
    if verb == "run":
        sys.exit(run(Path(paths[0])))
    if verb == "manifest":
        manifest(Path(paths[0]))
        sys.exit(0)
    sys.exit(compare(Path(paths[0]), Path(paths[1]), tuple(paths[2:4]) if len(paths) >= 4 else ("", "")))
