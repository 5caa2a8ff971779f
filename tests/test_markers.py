"""The markers that keep `make test-fast` fast: each is registered, the Makefile leaves out every one of them, and
every collected test that uses a browser, the PostgreSQL server or the real default model carries its marker
(tests/conftest.py sets those from the fixtures; the others are decorators in the test files)."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import HEAVY, REPO, heavy_markers


def test_make_test_fast_leaves_out_every_heavy_marker_and_each_is_registered():
    recipe = re.search(r"^test-fast:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "no test-fast target in the Makefile"
    expression = re.search(r'-m "([^"]+)"', recipe.group(1)).group(1)
    assert set(re.findall(r"\bnot (\w+)", expression)) == {*HEAVY, "soak"}, expression
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert {*HEAVY, "soak", "integration"} <= {line.split(":")[0] for line in options["markers"]}
    assert "--strict-markers" in options["addopts"]  # a misspelt marker is an error, not a test in the fast set


def test_tests_on_a_browser_postgresql_or_the_real_model_carry_their_marker(request):
    items = request.session.items
    missing = [f"{item.nodeid}: {name}" for item in items for name in sorted(heavy_markers(item))
               if not item.get_closest_marker(name)]
    assert missing == []
    assert all(item.get_closest_marker("slow") for item in items if item.get_closest_marker("integration"))
