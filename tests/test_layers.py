"""The architecture, checked: dependencies point down (import-linter's contracts in pyproject.toml), every module of
the composition is named in its layer, and modules and functions stay small unless a reason is written beside them."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("affinage", "agent", "retrieval", "synth_data", "tuning")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 80
REASON = "# long:"  # on a module's first lines or a function's def line: why it may be longer


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_imports_point_down_and_no_package_has_a_circle():
    linter = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert f"Contracts: {len(contracts())} kept, 0 broken." in result.stdout


def test_every_composition_module_is_in_the_top_layer():
    """A module added to affinage/ outside the core must be placed in the layers, or nothing would check it."""
    layers = next(c for c in contracts() if c["type"] == "layers")["layers"]
    top = {name.strip() for name in layers[0].split(":")}
    modules = {f"affinage.{p.stem if p.is_file() else p.name}" for p in (ROOT / "affinage").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}
    assert modules - {"affinage.core"} == top


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if "migrations/versions" not in p.as_posix())


def oversized(path: Path, name: str) -> list[str]:
    """The module or its functions over the limits with no ``# long:`` reason beside them."""
    text = path.read_text()
    lines = text.splitlines()
    found = []
    if len(lines) > MAX_MODULE_LINES and not any(REASON in line for line in lines[:15]):
        found.append(f"{name}: {len(lines)} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES and REASON not in lines[node.lineno - 1]:
                found.append(f"{name}:{node.lineno} {node.name}(): {length} lines")
    return found


def test_modules_and_functions_are_small_or_say_why():
    too_long = [line for path in sources() for line in oversized(path, path.relative_to(ROOT).as_posix())]
    assert not too_long, "over the size limits with no '# long: reason' beside them:\n" + "\n".join(too_long)


def test_the_size_check_sees_a_long_function_and_its_reason(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(89))
    plain, excused = tmp_path / "plain.py", tmp_path / "excused.py"
    plain.write_text(f"def f():\n{body}\n")
    excused.write_text(f"def f():  # long: a table of cases reads best in one place\n{body}\n")
    assert oversized(plain, "plain.py") == ["plain.py:1 f(): 90 lines"]
    assert oversized(excused, "excused.py") == []
