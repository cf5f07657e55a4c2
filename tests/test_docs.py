"""The generated references stay in step with the code."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (ROOT / "docs" / "api.md").read_text() == gen.render(), \
        "docs/api.md is out of date: run .venv/bin/python scripts/gen_api_docs.py"


def test_readme_names_the_two_commands_and_docs_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for link in ("docs/method.md", "docs/formats.md", "docs/cli.md", "docs/api.md", "docs/benchmarks.md"):
        assert link in readme and (ROOT / link).is_file(), link
