"""Module boundaries of the package, read from the source with ``ast`` (nothing is imported).

Every import of a package module counts, function-local ones included: no
import cycle; the paper's core reaches the cross-lab wing (``sites``) only at its
two declared seams; scoring, reporting, the predictions file, the classes and the
settings never reach nnabla; the predictions CSV has one reader; no function over
60 lines and no module over 600. The tests themselves use only public names of the package.
"""
import ast
import graphlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Set

PACKAGE = "wbc_nnabla"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
#: Modules that must work without nnabla: they read predictions of any model or tool, or show settings.
NNABLA_FREE = ("scoring", "pending", "report", "report_blocks", "report_figures", "reproduce_report", "predictions",
               "predictions_domain", "ensemble", "classes", "settings", "recipe", "presets", "predictor", "cli",
               "sites.domain", "sites.framing", "sites.stain", "sites.settings", "sites.seams",
               "review", "review.db", "review.load", "review.labels", "review.order", "review.server",
               "review.commands")
#: The review loop may import only these floors of the package (../shared/DESIGN.md: predictions, fileio,
#: classes, scoring, and what they stand on).
REVIEW_MAY_IMPORT = ("predictions", "predictions_domain", "fileio", "classes", "scoring", "pending", "outputs",
                     "errors", "settings", "sampling")
#: The wing, and the only core modules that may import it: each at its declared seam (module -> wing module).
#: The command line and ``reproduce`` (the faces over the API) may import the wing freely.
WING = f"{PACKAGE}.sites"
SEAMS = {f"{PACKAGE}.predictor": f"{WING}.seams", f"{PACKAGE}.training": f"{WING}.seams"}
FACES = (f"{PACKAGE}.cli", f"{PACKAGE}.pipeline")
#: Size rules of the code's shape (../shared/DESIGN.md): small functions, modules of one job.
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 600


def _module_name(path: Path) -> str:
    """``wbc_nnabla/fileio.py`` -> ``wbc_nnabla.fileio``; ``wbc_nnabla/x/__init__.py`` -> ``wbc_nnabla.x``."""
    parts = (PACKAGE,) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> Dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(ROOT.rglob("*.py"))}


def _package_of(module: str, path_is_init: bool) -> str:
    return module if path_is_init else module.rpartition(".")[0]


def _targets(node: ast.AST, module: str, is_init: bool, known: Set[str]) -> Set[str]:
    """Package modules an ``import`` / ``from ... import`` node loads (the longest known prefix of each name)."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = _package_of(module, is_init).split(".")
            base = base[:len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        # ``from pkg import name``: the submodule pkg.name when there is one, else an attribute of pkg
        names = [f"{stem}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        parts = name.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in known:
                out.add(".".join(parts[:k]))
                break
    return out


def _external(node: ast.AST) -> Set[str]:
    """Top-level names of the third-party packages a node imports (``nnabla.functions`` -> ``nnabla``)."""
    if isinstance(node, ast.Import):
        return {a.name.split(".")[0] for a in node.names}
    if isinstance(node, ast.ImportFrom) and not node.level and node.module:
        return {node.module.split(".")[0]}
    return set()


def _graph(top_level: bool = False):
    """``(edges, externals)``: package modules each module imports, and third-party top-level names
    (``top_level``: only the imports run when the module is imported, not those inside functions)."""
    sources = _sources()
    known = set(sources)
    init = {_module_name(p) for p in ROOT.rglob("__init__.py")}
    edges, externals = {}, {}
    for module, tree in sources.items():
        nodes = _module_level(tree) if top_level else ast.walk(tree)
        imports = [n for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom))]
        targets = set().union(*(_targets(n, module, module in init, known) for n in imports)) if imports else set()
        edges[module] = targets - {module}
        externals[module] = set().union(*(_external(n) for n in imports)) if imports else set()
    return edges, externals


def _module_level(tree: ast.Module):
    """The nodes of a module outside every function body (what runs when it is imported)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))


def _reach(edges, start: str) -> Dict[str, str]:
    """Modules reachable from ``start``, each with the chain of imports that reaches it."""
    seen = {start: start}
    todo = [start]
    while todo:
        m = todo.pop()
        for t in sorted(edges.get(m, ())):
            if t not in seen:
                seen[t] = f"{seen[m]} -> {t}"
                todo.append(t)
    return seen


def test_the_graph_sees_local_imports():
    edges, externals = _graph()
    assert f"{PACKAGE}.scoring" in edges[f"{PACKAGE}.report"]
    assert f"{PACKAGE}.pipeline" in edges[f"{PACKAGE}.cli.run"]  # imported inside a function
    assert "nnabla" in externals[f"{PACKAGE}.training"]


def test_no_import_cycle():
    edges, _ = _graph()
    try:
        tuple(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_scoring_never_imports_report():
    edges, _ = _graph()
    chains = _reach(edges, f"{PACKAGE}.scoring")
    assert f"{PACKAGE}.report" not in chains, chains.get(f"{PACKAGE}.report")


def test_scoring_and_reports_never_reach_the_domain_check():
    """They read the predictions' domain columns through the file's owner (predictions_domain), not the
    cross-lab domain check that computes them."""
    edges, _ = _graph()
    for name in ("scoring", "pending", "report", "report_blocks", "report_figures", "reproduce_report"):
        chains = _reach(edges, f"{PACKAGE}.{name}")
        assert f"{WING}.domain" not in chains, chains.get(f"{WING}.domain")


def test_scoring_report_predictions_classes_never_import_nnabla():
    """At import time: a module-level import chain from these never loads nnabla (a function may import it
    where it runs a network, as the predictor's nnabla backend does)."""
    edges, externals = _graph(top_level=True)
    for name in NNABLA_FREE:
        assert f"{PACKAGE}.{name}" in edges, f"no module {PACKAGE}.{name}"
        for module, chain in _reach(edges, f"{PACKAGE}.{name}").items():
            bad = sorted(x for x in externals[module] if x.startswith("nnabla"))
            assert not bad, f"{name} reaches {', '.join(bad)} through {chain}"


def test_one_predictions_reader():
    found = [module for module, tree in _sources().items() for node in ast.walk(tree)
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "read_predictions"]
    assert found == [f"{PACKAGE}.predictions"], found


def test_shared_names_are_defined_once():
    """``PathLike`` lives in ``errors`` and ``MODEL_SUFFIXES`` in ``modelfile``; other modules import them."""
    wanted = {"PathLike": [f"{PACKAGE}.errors"], "MODEL_SUFFIXES": [f"{PACKAGE}.modelfile"]}
    found = {name: [] for name in wanted}
    for module, tree in _sources().items():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id in found:
                    found[t.id].append(module)
    assert found == wanted


def test_every_error_class_of_the_package_is_a_wbc_error():
    """cli.main catches one type: every exception class the package defines derives from WBCError."""
    import importlib
    import inspect

    from wbc_nnabla.errors import WBCError
    found = []
    for module in _sources():
        if module.endswith("__main__"):         # runs the command line when imported
            continue
        mod = importlib.import_module(module)
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module:
                found.append(obj)
                assert issubclass(obj, WBCError), f"{module}.{name} is not a WBCError"
    assert len(found) >= 9


def test_no_function_over_60_lines():
    too_long = [f"{module}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                for module, tree in _sources().items() for node in ast.walk(tree)
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not too_long, too_long


def test_no_module_over_600_lines():
    too_long = {p.relative_to(ROOT).as_posix(): n for p in sorted(ROOT.rglob("*.py"))
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not too_long, too_long


def _in_wing(module: str) -> bool:
    return module == WING or module.startswith(WING + ".")


def test_the_core_reaches_the_wing_only_at_its_seams():
    """No core module imports ``sites`` but at a declared seam; a seam imports only the seam module."""
    edges, _ = _graph()
    assert set(SEAMS) <= set(edges) and set(SEAMS.values()) <= set(edges), "a seam module is missing"
    crossings = {(m, t) for m, targets in edges.items() for t in targets
                 if not _in_wing(m) and _in_wing(t) and not m.startswith(FACES)}
    assert crossings == set(SEAMS.items()), sorted(crossings - set(SEAMS.items()))


def test_the_review_loop_imports_only_the_floors_it_reads():
    """``review/`` reads predictions and cells and scores them; it never reaches a network, the wing or the CLI."""
    edges, _ = _graph()
    allowed = {f"{PACKAGE}.{m}" for m in REVIEW_MAY_IMPORT} | {PACKAGE}
    for module, targets in edges.items():
        if module.startswith(f"{PACKAGE}.review"):
            bad = sorted(t for t in targets if not t.startswith(f"{PACKAGE}.review") and t not in allowed)
            assert not bad, f"{module} imports {bad}"


def test_a_paper_run_needs_no_wing_module_but_the_seams():
    """From the training run and the predictor, the wing is reached only through the seam module, and the
    seam reaches the wing's nnabla-free modules (the reference's reading is imported where it is used)."""
    edges, _ = _graph()
    for start in SEAMS:
        for module, chain in _reach(edges, start).items():
            if _in_wing(module):
                assert module in (f"{WING}.seams", f"{WING}.domain", f"{WING}.framing", f"{WING}.stain",
                                  f"{WING}.settings", f"{WING}.reference", WING), chain


# ----------------------------------------------------------------------------- tests use the public API

TESTS = Path(__file__).resolve().parent
#: Test modules exempt from the check (none).
NOT_CHECKED = ()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(tree: ast.Module, modules: Set[str]) -> Set[str]:
    """Local names bound to a package module (``import wbc_nnabla.x as y``, ``from wbc_nnabla import x``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == PACKAGE:
                    names.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == PACKAGE:
            names.update(a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in modules)
    return names


def _private_uses(tree: ast.Module, modules: Set[str]) -> list:
    """``line: text`` of each private package name a module uses.

    ``from wbc_nnabla... import _x``, ``<package module>._x`` (``wbc_nnabla.x._y``
    too), ``getattr``/``setattr``/``monkeypatch.setattr(<package module>, "_x")``
    and a ``"wbc_nnabla.x._y"`` string (monkeypatch's dotted form).
    """
    aliases = _module_aliases(tree, modules)

    def is_module(node) -> bool:
        return (isinstance(node, ast.Name) and node.id in aliases) or (
            isinstance(node, ast.Attribute) and ast.unparse(node) in modules)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == PACKAGE:
            found += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and is_module(node.value):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Call) and len(node.args) >= 2 and is_module(node.args[0])
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(PACKAGE + ".")
              and any(_private(part) for part in node.value.split("."))):
            found.append(f"{node.lineno}: {node.value!r}")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_private_name_check_sees_every_form():
    modules = set(_sources())
    code = ("import wbc_nnabla.fileio\nfrom wbc_nnabla import segmentation, gradcam as g, __version__\n"
            "from wbc_nnabla.fileio import _umask, read_rgb\n"
            "segmentation._hull(m); g.upsample_map(r); wbc_nnabla.outputs._umask(); read_rgb._x; "
            "segmentation.GALLERY_TILE\n"
            "getattr(segmentation, '_radius'); monkeypatch.setattr('wbc_nnabla.export._prune', f)\n")
    found = {f.split(": ", 1)[1] for f in _private_uses(ast.parse(code), modules)}
    # (PACKAGE + "..." rather than one string: this file is checked too)
    assert found == {"from " + PACKAGE + ".fileio import _umask", "segmentation._hull",
                     PACKAGE + ".outputs._umask", "getattr(segmentation, '_radius')",
                     "'" + PACKAGE + ".export._prune'"}, found


def test_tests_use_no_private_name_of_the_package():
    """Tests go through the public API: what they need has a public, documented name."""
    modules = set(_sources())
    used = {p.name: _private_uses(ast.parse(p.read_text(encoding="utf-8"), str(p)), modules)
            for p in sorted(TESTS.glob("*.py")) if p.name not in NOT_CHECKED}
    assert len(used) >= 15
    used = {name: found for name, found in used.items() if found}
    assert not used, used


def test_moved_modules_still_import_with_a_warning():
    """0.1 code keeps working: ``wbc_nnabla.adaptation`` & co. are the wing's modules, with a DeprecationWarning."""
    code = textwrap.dedent("""
        import warnings, importlib
        warnings.simplefilter("error", DeprecationWarning)
        import wbc_nnabla
        for old, new in wbc_nnabla.MOVED_TO_SITES.items():
            try:
                importlib.import_module("wbc_nnabla." + old)
            except DeprecationWarning as w:
                assert "wbc_nnabla.sites." + new in str(w), w
            else:
                raise AssertionError(old + ": no warning")
        warnings.simplefilter("ignore", DeprecationWarning)
        from wbc_nnabla.finetune import read_labelled
        import wbc_nnabla.sites.finetune as wing
        assert read_labelled is wing.read_labelled
        assert wbc_nnabla.adaptation is importlib.import_module("wbc_nnabla.sites.adaptation")
        assert wing.__spec__.name == "wbc_nnabla.sites.finetune", wing.__spec__.name
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
