"""The generated references stay in step with the code; the short answers stay short; every link resolves."""
import importlib.util
import re
from pathlib import Path

import pytest

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


def _package_modules():
    """Every module of the package as ``gen_api_docs`` names it: ``engine``, ``sites.domain``, ``cli``
    (a sub-package by its ``__init__``); ``__main__`` (it runs the command) is left out."""
    package, names = ROOT / "wbc_nnabla", set()
    for path in package.rglob("*.py"):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if parts:
            names.add(".".join(parts))
    return names


def test_api_reference_covers_every_module():
    modules = _package_modules()
    assert {"engine", "sites.domain", "cli.train", "sites"} <= modules  # the walk reaches sub-packages
    listed = _generator().MODULES
    assert modules - set(listed) == set(), "add the module to MODULES in scripts/gen_api_docs.py"
    assert set(listed) - modules == set(), "MODULES names a module that is gone"
    assert len(listed) == len(set(listed)), "MODULES names a module twice"


def test_readme_names_the_two_commands_and_docs_exist():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    for link in ("docs/method.md", "docs/formats.md", "docs/cli.md", "docs/api.md", "docs/benchmarks.md"):
        assert link in readme and (ROOT / link).is_file(), link


#: The short answers a lab reads (issue 46, item 6); their research logs live in docs/research/.
SHORT_ANSWERS = ("docs/benchmarks.md", "docs/cross_site.md")
MAX_SHORT_ANSWER_LINES = 250


@pytest.mark.parametrize("name", SHORT_ANSWERS)
def test_short_answer_is_short_and_links_its_research_log_once(name):
    text = (ROOT / name).read_text()
    assert len(text.splitlines()) <= MAX_SHORT_ANSWER_LINES, f"{name}: {len(text.splitlines())} lines"
    links = re.findall(r"\]\((research/[^)#\s]+)", text)
    assert len(links) == 1 and text.count("research/") == 1, f"{name}: link docs/research/ exactly once"
    assert (ROOT / "docs" / links[0]).is_file(), f"{name}: {links[0]} does not exist"


def _markdown_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    """Every heading anchor of a markdown file (fenced code skipped; repeats get -1, -2, ...)."""
    anchors, fenced = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            slug = _slug(line.lstrip("#"))
            base, n = slug, 0
            while slug in anchors:
                n += 1
                slug = f"{base}-{n}"
            anchors.add(slug)
    return anchors


def _link_errors(md):
    text, errors = md.read_text(), []
    for target, anchor in re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]*))?\)", text):
        if target.startswith(("http://", "https://", "mailto:")) or not (target.endswith(".md") or not target):
            continue
        path = (md.parent / target).resolve() if target else md
        if not path.is_file():
            errors.append(f"{md.relative_to(ROOT)}: link to missing {target}")
        elif anchor and anchor not in _anchors(path):
            errors.append(f"{md.relative_to(ROOT)}: no heading #{anchor} in {target or md.name}")
    for named in re.findall(r"\bdocs/[\w./-]*?\.md\b", text):
        if not (ROOT / named).is_file():
            errors.append(f"{md.relative_to(ROOT)}: names missing {named}")
    return errors


def test_every_markdown_link_and_named_docs_file_exists():
    errors = [e for md in _markdown_files() for e in _link_errors(md)]
    assert errors == [], "\n".join(errors)
