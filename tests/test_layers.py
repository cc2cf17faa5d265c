"""The layers the folders show: contract at the bottom, service and trainer side by side on it, no circles.

The import graph is read from the source (every import, including those inside functions, since a lazy
import is still a dependency), so a circle hidden behind a function-level import fails here too.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.procs import REPO_ROOT

PACKAGES = ("contract", "service", "trainer", "loadtest")


def run_fresh(code: str, timeout: int = 120) -> str:
    """``code``'s standard output, run in a fresh interpreter at the repository root (what a module imports
    there is all its own); fails the test with the end of its standard error if it fails."""
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """First-party modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:  # the deepest first-party module the name is in
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def read_graph() -> dict[str, list[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}
    modules = set(files)
    return {name: sorted(_imports(path, modules) - {name}) for name, path in files.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Read in a fresh interpreter: CPython 3.11's ``ast.parse`` can fail with "AST constructor recursion depth
    mismatch" in a process where earlier tests hit deep recursion, which says nothing about the code."""
    import json

    script = "import json, tests.test_layers as t; print(json.dumps(t.read_graph()))"
    return {name: set(deps) for name, deps in json.loads(run_fresh(script)).items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, if any, as the list of modules on it (packages' own __init__ edges excluded)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if node.startswith(target + "."):  # a module importing its own package's __init__
                continue
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle(graph):
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_one():
    """The check above can fail: a made-up circle is found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_contract_is_a_leaf(graph):
    for module, imported in graph.items():
        if module.split(".")[0] == "contract":
            assert all(name.split(".")[0] == "contract" for name in imported), (module, imported)


def test_trainer_imports_the_service_only_for_eval_through_the_ranker(graph):
    users = {module: sorted(i for i in imported if i.startswith("service")) for module, imported in graph.items()
             if module.startswith("trainer")}  # fmt: skip
    assert {module for module, imported in users.items() if imported} == {"trainer.evaluation.serving"}, users


def test_loadtest_does_not_import_the_trainer(graph):
    for module, imported in graph.items():
        if module.startswith("loadtest"):
            assert not [i for i in imported if i.startswith("trainer")], module


@pytest.mark.parametrize("module", ["trainer.sft", "trainer.rl", "trainer.pretrain", "contract.checkpoint"])
def test_training_loads_no_web_framework_redis_or_prometheus(module):
    code = (
        f"import sys, {module}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'redis', "
        "'prometheus_client', 'uvicorn'))\n"
        "print(','.join(bad))"
    )
    loaded = run_fresh(code)
    assert loaded == "", f"{module} loads {loaded}"


def test_readme_module_map_lists_every_module(graph):
    """One line per module in the README's map, so a new module cannot go unlisted."""
    readme = (REPO_ROOT / "README.md").read_text()
    listed = set(re.findall(r"^([a-z0-9_]+(?:/[a-z0-9_]+)*\.py) ", readme, flags=re.MULTILINE))
    modules = {str(p.relative_to(REPO_ROOT)) for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}
    assert not modules - listed, f"README.md's module map lacks {sorted(modules - listed)}"
    assert not listed - modules, f"README.md's module map lists modules that do not exist: {sorted(listed - modules)}"


def test_every_benchmark_and_load_module_imports():
    """Benchmarks run by hand, not by the suite: importing each one here catches an import that went stale
    (a moved or renamed name) before someone types its command. A fresh interpreter: locust patches sockets."""
    code = (
        "import importlib, pkgutil, trainer.bench, loadtest\n"
        "packages = (trainer.bench, loadtest)\n"
        "names = [f'{p.__name__}.{m.name}' for p in packages for m in pkgutil.iter_modules(p.__path__)]\n"
        "for name in sorted(names, key=lambda n: n.endswith('locustfile')):\n"
        "    importlib.import_module(name)\n"
        "print(len(names))"
    )
    assert int(run_fresh(code, timeout=300)) >= 15


SERVER_ONLY = ("torch", "transformers", "tokenizers", "safetensors", "vllm", "fastapi", "starlette", "uvicorn",
               "redis", "prometheus_client", "typer", "orjson", "pydantic_settings")  # fmt: skip


def test_the_client_imports_and_calls_with_only_the_core_install():
    """`pip install 'r2rank[client]'` installs the core dependencies alone; the typed client must work with them.
    The server's packages are made unimportable in a fresh interpreter, then the client ranks over a transport
    that answers like the service."""
    code = (
        "import importlib.abc, sys\n"
        f"blocked = {SERVER_ONLY!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in blocked:\n"
        "            raise ImportError(f'{name} is not in the client install')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import httpx\n"
        "from service.client import R2RankClient\n"
        "reply = {'request_id': 'r', 'model_version': 'm', 'timings_ms': {},\n"
        "         'items': [{'item_id': 'a', 'score': 1.0, 'rank': 1}]}\n"
        "transport = httpx.MockTransport(lambda request: httpx.Response(200, json=reply))\n"
        "with R2RankClient(transport=transport) as client:\n"
        "    ranked = client.rank(user_id='u', candidates=['a'])\n"
        "print(ranked.items[0].item_id)"
    )
    assert run_fresh(code) == "a"


def test_the_core_install_names_no_server_package():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    core = {re.split(r"[<>=\[ ;]", requirement)[0].replace("-", "_").lower() for requirement in project["dependencies"]}
    assert not core & set(SERVER_ONLY), core & set(SERVER_ONLY)
    assert project["optional-dependencies"]["client"] == []
