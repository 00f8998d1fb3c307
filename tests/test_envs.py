"""Conda envs (envs/*.yaml) and pyproject dependencies must match what the code imports.

Conda cannot reach its channels on the development machines, so the envs are checked statically:
each parses, pins every package, and pins every third-party package its stage's code imports
(following imports within nanoxtal). The same import analysis keeps pyproject.toml honest.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ENVS = sorted((REPO / "envs").glob("*.yaml"))
# Tools the workflow runs rather than imports, the package itself, and pyarrow and openpyxl
# (pandas' parquet and xlsx engines, which pandas imports on our behalf).
NOT_IMPORTED = {
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "pytest",
    "ruff",
    "nanoxtal",
    "pyarrow",
    "openpyxl",
    # The API reference's builder (tests/test_docs.py runs it).
    "sphinx",
    "myst-parser",
    # RapidOCR's inference engine, which rapidocr imports on our behalf.
    "onnxruntime",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def module_path(module: str) -> Path | None:
    base = SRC / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def imports_of(path: Path, top_level_only: bool) -> tuple[set[str], set[str]]:
    """(nanoxtal modules, third-party top-level names) imported by one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    internal, external = set(), set()
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            top = name.split(".")[0]
            if top == "nanoxtal":
                if module_path(name):
                    internal.add(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                external.add(top)
    return internal, external


def third_party_closure(entry_modules: list[str]) -> set[frozenset[str]]:
    """Imports of the entry modules and the nanoxtal modules they import, each as the set of
    distributions that provide it (e.g. `pymatgen` comes from pymatgen or pymatgen-core)."""
    seen, todo, names = set(), list(entry_modules), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_path(module)
        # Inside the stage's own package every import counts; elsewhere (e.g. the CLI, which
        # imports other stages lazily inside functions) only module-level imports do.
        stage_owned = any(module.startswith(entry) for entry in entry_modules[1:])
        internal, external = imports_of(path, top_level_only=not stage_owned)
        names |= external
        todo.extend(internal)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return {providers(name) for name in names}


@cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def providers(import_name: str) -> frozenset[str]:
    found = _distributions().get(import_name)
    assert found, f"no installed distribution provides the import {import_name!r}"
    return frozenset(normalise(name) for name in found)


def stage_modules(stage: str) -> list[str]:
    modules = [f"nanoxtal.{stage}"]
    for path in (SRC / "nanoxtal" / stage).rglob("*.py"):
        modules.append(
            ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        )
    return ["nanoxtal.cli", *modules]


def env_pins(env_file: Path) -> dict[str, str]:
    spec = yaml.safe_load(env_file.read_text())
    pins: dict[str, str] = {}
    for entry in spec["dependencies"]:
        items = entry["pip"] if isinstance(entry, dict) else [entry]
        for item in items:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*(==|=|>=)\s*([\w.*+!\-]+)", item)
            if match:
                pins[normalise(match.group(1))] = match.group(2) + match.group(3)
            else:
                pins[normalise(item)] = ""
    return pins


def test_there_is_an_env_per_stage_package():
    stages = {
        p.name for p in (SRC / "nanoxtal").iterdir() if p.is_dir() and p.name != "__pycache__"
    }
    assert {p.stem for p in ENVS} >= stages


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.stem)
def test_env_parses_and_pins_everything(env_file):
    spec = yaml.safe_load(env_file.read_text())
    assert spec["channels"][0] == "conda-forge"
    pins = env_pins(env_file)
    assert pins.get("python", "").startswith("=3.1"), "python must be pinned"
    unpinned = [
        name
        for name, pin in pins.items()
        if name not in {"pip", "setuptools"} and not pin.startswith(("==", "="))
    ]
    assert not unpinned, f"{env_file.name}: unpinned packages {unpinned}"
    assert (env_file.parent / f"{env_file.stem}.post-deploy.sh").is_file()


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.stem)
def test_env_pins_every_import_of_its_stage(env_file):
    pins = set(env_pins(env_file))
    missing = [sorted(p) for p in third_party_closure(stage_modules(env_file.stem)) if not p & pins]
    assert not missing, f"{env_file.name} does not pin {missing}, imported by its stage"


def test_every_rule_uses_an_existing_env():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().is_file(), f"{smk.name}: {env} not found"


def declared_dependencies() -> dict[str, set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {
        group: {normalise(re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0]) for spec in specs}
        for group, specs in groups.items()
    }


def test_pyproject_declares_exactly_what_the_code_imports():
    imported: set[frozenset[str]] = set()
    for path in SRC.rglob("*.py"):
        _, external = imports_of(path, top_level_only=False)
        imported |= {providers(name) for name in external}
    declared = set().union(*declared_dependencies().values())
    undeclared = [sorted(p) for p in imported if not p & declared]
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = declared - set().union(*imported) - NOT_IMPORTED
    assert not unused, f"declared but never imported: {unused}"
