"""The generated references stay in step with the code."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_api_reference_is_current():
    gen = _generator()
    assert (ROOT / "docs" / "api.md").read_text() == gen.render(), \
        "docs/api.md is out of date: run .venv/bin/python scripts/gen_api_docs.py"


def test_api_reference_covers_every_module():
    modules = {p.stem for p in (ROOT / "wbc_nnabla").glob("*.py") if p.stem != "__init__"}
    assert modules - set(_generator().MODULES) == set(), "add the module to MODULES in scripts/gen_api_docs.py"


def test_readme_names_the_two_commands_and_docs_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for link in ("docs/method.md", "docs/formats.md", "docs/cli.md", "docs/api.md", "docs/benchmarks.md"):
        assert link in readme and (ROOT / link).is_file(), link
