"""The device run's wheel bundle (``benchmarks/gpu_bundle.py``): closed under its packages' requirements, covering every
third-party import of tphys, rl and the GPU check, and downloaded for the device's Python without dependency
resolution."""

import ast
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_bundle  # noqa: E402

# imports that the GPU check never reaches: the dev extras' test tools and optional paths behind a try or a flag
NOT_ON_THE_DEVICE_PATH = {"mujoco", "scipy", "hypothesis", "pytest", "submitit", "gymnasium_robotics"}


def imported_modules(paths) -> set[str]:
    """Top-level names of every ``import`` / ``from ... import`` (absolute) in the files."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_the_bundle_is_closed_under_its_requirements():
    assert gpu_bundle.missing() == {}


def test_a_requirement_neither_bundled_nor_in_the_image_is_named():
    lacking = gpu_bundle.missing(packages=("tensordict", "torchrl"), image=("torch", "numpy"))
    assert "pyvers" in lacking["tensordict"] and "cloudpickle" in lacking["tensordict"]
    assert "hoptorch" in lacking["torchrl"] and "tensordict" not in lacking["torchrl"]


def test_every_third_party_import_of_tphys_rl_and_the_check_is_bundled_or_in_the_image():
    files = [*REPO.glob("tphys/**/*.py"), *REPO.glob("rl/**/*.py"), REPO / "benchmarks" / "gpu_check.py",
             REPO / "benchmarks" / "report.py"]
    local = {"tphys", "rl", "report", "__future__"}
    third_party = imported_modules(files) - set(sys.stdlib_module_names) - local - NOT_ON_THE_DEVICE_PATH
    distributions = packages_distributions()
    have = {canonicalize_name(p) for p in (*gpu_bundle.PACKAGES, *gpu_bundle.IMAGE)}
    uncovered = {m: distributions.get(m) for m in third_party
                 if not distributions.get(m) or not any(canonicalize_name(d) in have for d in distributions[m])}
    assert not uncovered, f"imported but neither bundled nor in the device image: {uncovered}"


def test_the_download_is_for_the_device_python_binary_only_without_dependencies(tmp_path):
    command = gpu_bundle.download_command(["torchrl==0.14.1"], tmp_path, "3.12")
    assert command[command.index("--python-version") + 1] == "3.12"
    assert "--no-deps" in command and "--only-binary=:all:" in command and "cp312" in command
    assert command[-1] == "torchrl==0.14.1" and str(tmp_path) in command


def test_pins_are_this_venvs_versions():
    from importlib.metadata import version

    assert gpu_bundle.pins(("tensordict", "torchrl")) == [f"tensordict=={version('tensordict')}", f"torchrl=={version('torchrl')}"]


def test_held_finds_a_pure_wheel_built_before(tmp_path):
    (tmp_path / "antlr4_python3_runtime-4.9.3-py3-none-any.whl").write_bytes(b"")
    assert gpu_bundle.held("antlr4-python3-runtime==4.9.3", tmp_path)
    assert not gpu_bundle.held("antlr4-python3-runtime==4.9.4", tmp_path)
    (tmp_path / "orjson-3.13.0-cp312-cp312-manylinux_2_17_x86_64.whl").write_bytes(b"")
    assert not gpu_bundle.held("orjson==3.13.0", tmp_path)  # not pure: built here, it would not run there
