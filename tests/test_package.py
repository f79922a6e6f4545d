"""The package as a whole: subpackages that import each other in one direction only (no circle anywhere), one
home and one import path for every name, the light `import dynshuffle`, and a reason beside every import
that waits inside a function (docs/design.md §11)."""
from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import dynshuffle

SRC = Path(dynshuffle.__file__).resolve().parent

# What each part of the package may import (besides itself): docs/design.md §11 draws the same.
ALLOWED = {
    "dynshuffle": set(),
    "utils": set(),
    "layers": set(),
    "models": {"layers"},
    "checkpoints": {"layers", "models", "utils"},
    "data": {"utils"},
    "profiling": {"layers", "models"},
    "inspection": {"layers", "profiling", "utils"},
    "deploy": {"dynshuffle", "layers", "models", "checkpoints", "data", "profiling", "utils"},
    "training": {"layers", "models", "checkpoints", "data", "profiling", "inspection", "utils"},
    "commands": {"dynshuffle", "layers", "models", "checkpoints", "data", "profiling", "inspection", "deploy",
                 "training", "utils", "cli"},
    "cli": {"utils"},  # command_line_names: errors name the flags
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = SRC.parent / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """Every dynshuffle module `path` imports, at the top or inside functions (TYPE_CHECKING ones included)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "dynshuffle":
                for alias in node.names:  # `from package import module` imports the module
                    found.add(f"{module}.{alias.name}" if _is_module(f"{module}.{alias.name}") else module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "dynshuffle")
    return found - {name}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def _part(module: str) -> str:
    parts = module.split(".")
    return "dynshuffle" if len(parts) == 1 else parts[1]


def test_no_import_circle_anywhere():
    graph = _graph()
    assert "dynshuffle.layers.base" in graph and len(graph) > 60
    done: set[str] = set()
    stack: list[str] = []

    def visit(name):
        assert name not in stack, "import circle: " + " -> ".join(stack[stack.index(name):] + [name])
        if name in done:
            return
        stack.append(name)
        for dep in sorted(graph.get(name, ())):
            visit(dep)
        stack.pop()
        done.add(name)

    for name in graph:
        visit(name)


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for module, deps in _graph().items():
        part = _part(module)
        for dep in deps:
            if _part(dep) != part and _part(dep) not in ALLOWED[part]:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, wrong
    # and the drawing of docs/design.md is a hierarchy: no part may import one that may import it
    for part, allowed in ALLOWED.items():
        for other in allowed:
            assert part not in ALLOWED[other], (part, other)


def test_every_name_has_one_home_and_one_import_path():
    """A module's `__all__` lists only names it defines; a subpackage's `__init__` defines and re-exports
    nothing (the models' imports its architectures to register them); only `dynshuffle` itself re-exports,
    the headline names, each from its home module."""
    for path in sorted(SRC.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text())
        if path.name == "__init__.py" and name != "dynshuffle":
            statements = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
            allowed = ["from . import shufflenet_v1, shufflenet_v2"] if name == "dynshuffle.models" else []
            assert [ast.unparse(n) for n in statements] == allowed, name
            continue
        if name == "dynshuffle" or name.endswith("__main__"):
            continue
        module = importlib.import_module(name)
        defined = {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                   for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
        defined |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for exported in getattr(module, "__all__", []):
            assert exported in defined, f"{name}.__all__ lists {exported}, defined elsewhere"
    for exported, home in dynshuffle._LAZY.items():
        value = getattr(importlib.import_module(home), exported)
        assert value.__module__ == home and exported in importlib.import_module(home).__all__, exported
        assert getattr(dynshuffle, exported) is value


def test_the_front_door():
    from dynshuffle.layers.dynamic import DynamicShuffle
    from dynshuffle.models.registry import create_model, list_models, register_model
    from dynshuffle.profiling.counting import profile

    assert dynshuffle.create_model is create_model and dynshuffle.list_models is list_models
    assert dynshuffle.register_model is register_model and dynshuffle.profile is profile
    assert dynshuffle.DynamicShuffle is DynamicShuffle
    assert sorted(dir(dynshuffle)) == sorted(dynshuffle.__all__)
    for old in ("orthogonality_loss", "functional", "set_shuffle_mode_", "load_compatible_state_dict_"):
        if old not in dynshuffle._LAZY:
            with pytest.raises(AttributeError):
                getattr(dynshuffle, old)


def test_imports_inside_functions_say_why():
    """Outside the command line (whose modules load their stacks when a command runs, so `--help` is fast),
    an import inside a function keeps `import dynshuffle` light or guards an optional dependency, and its line
    (or the line above) says which."""
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        if "commands" in path.parts:
            continue
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        line, above = lines[sub.lineno - 1], lines[sub.lineno - 2]
                        if "#" not in line and not above.strip().startswith("#"):
                            missing.append(f"{path.relative_to(SRC)}:{sub.lineno}: {line.strip()}")
    assert not missing, missing


def test_import_dynshuffle_is_light(env_with_src):
    code = ("import sys, dynshuffle; print(sorted(m for m in sys.modules if m.startswith('dynshuffle.') "
            "or m in ('torch', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env_with_src)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_models_do_not_import_training(env_with_src):
    code = ("import sys, dynshuffle.models.registry, dynshuffle.checkpoints; "
            "print(sorted(m for m in sys.modules if m.startswith(('dynshuffle.training', 'dynshuffle.data'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env_with_src)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_public_classes_and_functions_say_why():
    """Every public class and function of the layers has a docstring (the style the package keeps)."""
    from dynshuffle.layers import base, channel_shuffle, dynamic, fused, generator, learned, modes, schedule, sds

    undocumented = [f"{m.__name__}.{n}" for m in (base, channel_shuffle, dynamic, fused, generator, learned, modes,
                                                  schedule, sds)
                    for n in m.__all__ if (inspect.isclass(getattr(m, n)) or inspect.isfunction(getattr(m, n)))
                    and not inspect.getdoc(getattr(m, n)) and n not in ("check_mode", "check_input")]
    assert not undocumented, undocumented
