"""What `app/` imports is installed by the main dependencies alone: `parley serve` (the quick start's
`--no-dev`, the image's `uv sync --no-dev`) never needs the dev group."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[([^\]]+)\])?")


def _name(requirement: str) -> tuple[str, set[str]]:
    match = REQUIREMENT.match(requirement.strip())
    assert match is not None, requirement
    extras = {extra.strip() for extra in (match[2] or "").split(",") if extra.strip()}
    return re.sub(r"[-_.]+", "-", match[1]).lower(), extras


def _installed_by_main_dependencies() -> set[str]:
    """The main dependencies and, with the extras they ask for, everything they require in turn."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pending = [_name(requirement) for requirement in project["dependencies"]]
    seen: set[str] = set()
    while pending:
        name, extras = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # for another Python or platform (its marker), so not installed here
        for requirement in requirements:
            marker = requirement.split(";", 1)[1] if ";" in requirement else ""
            wanted = re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if wanted and not set(wanted) & extras:
                continue
            pending.append(_name(requirement.split(";", 1)[0]))
    return seen


def test_app_imports_only_what_the_main_dependencies_install() -> None:
    modules: set[str] = set()
    for path in (ROOT / "app").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"app", "__future__"}
    by_module = importlib.metadata.packages_distributions()
    installed = _installed_by_main_dependencies()
    missing = {
        module: by_module.get(module)
        for module in third_party
        if not {_name(dist)[0] for dist in by_module.get(module, [])} & installed
    }
    assert not missing, f"app/ imports modules only the dev group installs: {missing}"
