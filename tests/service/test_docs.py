"""The documentation: the README is a short front door, the experiment key reference covers
every key the parser accepts, and the site builds (`mkdocs build --strict`) with the pages
a newcomer needs, linked to each other.

The accepted keys are not read from `search.experiment.keys.SECTIONS` (what the reference is
generated from): they are asked of the parser, by handing it an unknown key in each
section and reading the "allowed: ..." list of its one-line error.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from oneprune.allocation import ALLOCATIONS
from search.experiment.loading import ConfigError, parse_experiment

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
UNKNOWN = "no_such_key_zz"
SPARSITY_RANGE = {"min": 0.5, "max": 0.9}


def _allowed(raw: dict, where: str) -> list[str]:
    """The keys the parser lists as allowed when `raw` holds an unknown key at `where`."""
    with pytest.raises(ConfigError) as caught:
        parse_experiment(raw)
    message = str(caught.value)
    assert UNKNOWN in message, f"{where}: refused for another reason: {message}"
    match = re.search(r"allowed: (.+)$", message)
    assert match, f"{where}: no list of allowed keys in {message!r}"
    return [key.strip() for key in match.group(1).split(",")]


def accepted_keys() -> set[str]:
    """Every dotted key an experiment file may hold, as the parser reports them."""
    keys = set()
    top = _allowed({"name": "docs", UNKNOWN: 1}, "top level")
    keys.update(top)
    keys.update(f"sparsity.{k}" for k in _allowed(
        {"name": "docs", "sparsity": {**SPARSITY_RANGE, UNKNOWN: 1}}, "sparsity"))
    for section in ("search", "training", "resources", "tracking", "faults"):
        assert section in top
        keys.update(f"{section}.{k}" for k in _allowed(
            {"name": "docs", section: {UNKNOWN: 1}}, section))
    for section, needs in (("confirm", {}), ("latency", {"cost": "latency"})):
        assert section in top
        keys.update(f"{section}.{k}" for k in _allowed(
            {"name": "docs", "sparsity": SPARSITY_RANGE, **needs, section: {UNKNOWN: 1}},
            section))
    keys.update(f"allocation_args.{k}" for k in _allowed(
        {"name": "docs", "allocation": list(ALLOCATIONS), "allocation_args": {UNKNOWN: 1}},
        "allocation_args"))
    families = _allowed({"name": "docs", "search": {"space": {UNKNOWN: {}}}}, "search.space")
    for family in families:
        keys.update(f"search.space.{family}.{k}" for k in _allowed(
            {"name": "docs", "search": {"space": {family: {UNKNOWN: 1}}}},
            f"search.space.{family}"))
    return keys


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_keys_hook",
                                                  ROOT / "docs" / "hooks" / "keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def listed_keys(markdown: str) -> set[str]:
    """The keys in the first column of the reference's tables."""
    return set(re.findall(r"^\| `([a-z_][a-z0-9_.]*)` \|", markdown, flags=re.MULTILINE))


def test_the_parser_reports_a_plausible_set_of_keys():
    keys = accepted_keys()
    # A few that any reader of the docs uses; guards against parsing the errors wrongly.
    for key in ("name", "sparsity", "sparsity.max_drop", "training.lr_max",
                "search.space.one_cycle.alpha", "resources.workers_per_trial",
                "tracking.optuna_storage", "faults.raise_at_epoch"):
        assert key in keys
    assert len(keys) > 60


def test_the_key_reference_lists_every_accepted_key_and_no_other():
    page = load_hook().render()
    accepted, listed = accepted_keys(), listed_keys(page)
    assert not accepted - listed, f"missing from the key reference: {sorted(accepted - listed)}"
    assert not listed - accepted, f"listed but refused by the parser: {sorted(listed - accepted)}"


def test_the_key_reference_page_has_its_marker():
    hook = load_hook()
    page = (ROOT / "docs" / hook.PAGE).read_text(encoding="utf-8")
    assert page.count(hook.MARKER) == 1


def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    # The two commands CI follows, exactly.
    assert 'pip install -e ".[dev,timm]" && pytest' in text
    assert 'pip install -e ".[dev]" && python search/run.py' in text
    # Every relative link and image points at a file that exists.
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert local, "the README links into the docs"
    for target in local:
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    for section in ("getting-started.md", "guide/", "concepts/", "results.md",
                    "benchmarks.md", "reliability.md", "reference/"):
        assert any(t.startswith(f"docs/{section}") for t in local), section


# -- the site, built as CI builds it ----------------------------------------------------------

# Pages a newcomer needs, and the pages each must link to (paths of the built site).
NEWCOMER_PAGES = {
    "index.html": ["getting-started/", "guide/experiments/", "guide/cluster/",
                   "concepts/fair-comparison/", "results/", "reference/"],
    "getting-started/index.html": ["guide/experiments/", "guide/mlflow/", "guide/keys/",
                                   "guide/own-model/", "guide/cluster/"],
    "guide/experiments/index.html": ["guide/keys/", "concepts/fair-comparison/"],
    "guide/keys/index.html": ["guide/experiments/"],
    "guide/own-model/index.html": ["guide/experiments/"],
    "guide/train-cli/index.html": ["guide/library/"],
    "guide/mlflow/index.html": ["guide/resuming/"],
    "guide/cluster/index.html": ["reliability/", "guide/resuming/"],
    "guide/resuming/index.html": ["reliability/"],
    "concepts/schedules/index.html": ["concepts/lr-coupling/"],
    "concepts/fair-comparison/index.html": ["concepts/how-sparse/", "results/"],
    "results/index.html": ["benchmarks/"],
    "benchmarks/index.html": ["contributing/"],
    "reliability/index.html": ["guide/cluster/"],
    "reference/index.html": ["reference/oneprune/schedules/", "reference/search/"],
}


def _links(html: str, page: str) -> set[str]:
    """The site paths `page` links to (relative hrefs resolved, anchors dropped)."""
    base = Path("/") / page
    found = set()
    for href in re.findall(r'href="([^"#]*)(?:#[^"]*)?"', html):
        if not href or re.match(r"[a-z]+:", href) or href.startswith("//"):
            continue
        resolved = os.path.normpath(base.parent / href)
        found.add(resolved.lstrip("/") + ("/" if href.endswith("/") else ""))
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mkdocs is not installed: the docs extra is part of dev")
        pytest.skip('mkdocs is not installed: pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-4000:]
    return out


@pytest.mark.slow
def test_the_site_has_the_pages_a_newcomer_needs_linked_to_each_other(site):
    for page, targets in NEWCOMER_PAGES.items():
        path = site / page
        assert path.is_file(), f"no page {page}"
        links = _links(path.read_text(encoding="utf-8"), page)
        for target in targets:
            assert target in links, f"{page} does not link to {target}"
            assert (site / target / "index.html").is_file(), target
    # Every page is reachable from the navigation of the home page.
    home = _links((site / "index.html").read_text(encoding="utf-8"), "index.html")
    pages = {p.parent.relative_to(site).as_posix() + "/" for p in site.rglob("index.html")
             if p.parent != site}
    assert "reference/search/" in pages and len(pages) > 30
    assert not pages - home, f"pages not in the navigation: {sorted(pages - home)}"


@pytest.mark.slow
def test_the_built_key_reference_and_api_pages_render(site):
    keys = (site / "guide" / "keys" / "index.html").read_text(encoding="utf-8")
    for key in accepted_keys():
        assert f"<code>{key}</code>" in keys, key
    schedules = (site / "reference" / "oneprune" / "schedules" / "index.html").read_text(
        encoding="utf-8")
    assert 'id="oneprune.schedules.OneCycle"' in schedules
    assert "<blockquote>" not in schedules          # doctest examples are code, not quotes
    assert "schedule_from_dict" in schedules
    search = (site / "reference" / "search" / "index.html").read_text(encoding="utf-8")
    assert 'id="search.experiment.loading"' in search
    # Every figure a page shows was copied into the site.
    for page in site.rglob("*.html"):
        for src in re.findall(r'<img[^>]+src="([^"]+)"', page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+:", src):
                assert (page.parent / src).resolve().is_file(), f"{page}: {src}"
