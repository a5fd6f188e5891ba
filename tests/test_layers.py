"""The layering of the house plan: ``rl`` reaches tphys only through ``tphys.envs`` and the tphys-wide public modules,
no module imports a private name from another package, and no code reads an env's private generator."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC_TPHYS = ("tphys.envs", "tphys.autodiff", "tphys.render")  # what rl may import from tphys
SOURCES = sorted(p for d in ("tphys", "rl", "recipes", "benchmarks") for p in (ROOT / d).rglob("*.py"))


def imports(path: Path):
    """``(module, names)`` of every import in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield module, [a.name for a in node.names]


def subpackage(module: str) -> str:
    """``tphys.particles.model`` -> ``tphys.particles``; ``rl.trainers.guard`` -> ``rl.trainers``."""
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize("path", [p for p in SOURCES if p.is_relative_to(ROOT / "rl")], ids=lambda p: str(p.relative_to(ROOT)))
def test_rl_uses_tphys_only_through_its_public_modules(path):
    for module, _ in imports(path):
        if module == "tphys" or module.startswith("tphys."):
            assert module == "tphys" or any(module == p or module.startswith(p + ".") for p in PUBLIC_TPHYS), (
                f"{path.relative_to(ROOT)} imports {module}: rl may use tphys.envs and {', '.join(PUBLIC_TPHYS[1:])} only")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_private_name_from_another_package(path):
    own = subpackage(".".join(path.relative_to(ROOT).with_suffix("").parts))
    for module, names in imports(path):
        if not (module.startswith("tphys") or module.startswith("rl")):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private or subpackage(module) == own, f"{path.relative_to(ROOT)} imports private {private} from {module}"


def test_no_code_outside_the_envs_reads_an_env_private_generator():
    private = re.compile(r"\._generator\b|[\"']_generator[\"']")  # attribute access or getattr(env, "_generator")
    offenders = [str(p.relative_to(ROOT)) for p in SOURCES if private.search(p.read_text()) and not p.is_relative_to(ROOT / "tphys")]
    assert not offenders, f"use env.generator (public), not env._generator: {offenders}"
