"""The wheels the GPU check needs on the device machine, downloaded here into a folder that the device run carries.

The workplace's CUDA image (``/work/.library/device/KINDS.md``) has python3 3.12 with torch, triton, numpy, tqdm,
matplotlib, imageio, einops, cloudpickle, packaging, PyYAML, joblib and zipp, and no network. It lacks what tphys and
rl import besides: tensordict and torchrl (and their pyvers, hoptorch, orjson, importlib_metadata, lazy-importer),
hydra-core, omegaconf and the joblib launcher the recipes' config names (antlr4-python3-runtime), gymnasium (the MJCF
assets of ant and hopper; farama-notifications). This script downloads each as a wheel for that Python
(``--python-version``, default 3.12; manylinux x86_64, binary only, no dependencies resolved: the list above is the
closure; a package with no wheel on the index, antlr4-python3-runtime 4.9.3, is built here from its source and kept
only when pure Python) at the version installed in this venv, so that the device runs the versions the suite passes
with. ``benchmarks/gpu_device.sh`` installs them there and runs ``gpu_check.py``:

    python benchmarks/gpu_bundle.py                       # -> .whl/gpu (ignored by git; 13 wheels, 4.8 MiB)
    # then, with the device tool: run(command="bash benchmarks/gpu_device.sh", carry=[".whl"], timeout_s=540)

The list was found by rehearsal: a venv holding torch and the image's other packages alone, these wheels, and
``gpu_device.sh --smoke`` (the SAPO row failed without the joblib launcher).
``--python-version 3.11 --dest /tmp/whl311`` builds the same set for this machine's Python, to rehearse the device run
in a venv holding torch alone (``GPU_PYTHON=... GPU_WHEELS=/tmp/whl311 bash benchmarks/gpu_device.sh --smoke``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# what the device image lacks (KINDS.md's package list), with what those need in turn
PACKAGES = ("tensordict", "torchrl", "pyvers", "hoptorch", "orjson", "importlib_metadata", "lazy-importer", "hydra-core",
            "omegaconf", "antlr4-python3-runtime", "hydra-joblib-launcher", "gymnasium", "farama-notifications")
# the device image's packages that the bundled ones or tphys and rl need (from KINDS.md's list of 2026-11-17)
IMAGE = ("torch", "triton", "numpy", "tqdm", "matplotlib", "imageio", "einops", "cloudpickle", "packaging", "pyyaml", "joblib",
         "zipp", "typing-extensions", "pillow", "setuptools", "jinja2", "sympy", "filelock", "fsspec", "networkx")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")


def pins(packages=PACKAGES) -> list[str]:
    """``name==version`` of each package as installed in this venv (a package missing here is an error naming it)."""
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            raise SystemExit(f"gpu_bundle: {name} is not installed in {sys.prefix}; install the project (pip install -e .) first") from None
    return out


def missing(packages=PACKAGES, image=IMAGE, python_version: str = "3.12") -> dict[str, list[str]]:
    """{package: [its requirements, on Linux under ``python_version``, neither bundled nor in the image]}, empty when
    the bundle is closed (read from this venv's installed metadata)."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    have = {canonicalize_name(p) for p in (*packages, *image)}
    environment = {"python_version": python_version, "sys_platform": "linux", "platform_system": "Linux", "extra": ""}
    out = {}
    for name in packages:
        needs = [Requirement(r) for r in requires(name) or []]
        lacking = [r.name for r in needs if (r.marker is None or r.marker.evaluate(environment)) and canonicalize_name(r.name) not in have]
        if lacking:
            out[name] = lacking
    return out


def download_command(requirements: list[str], dest: Path, python_version: str) -> list[str]:
    """The ``pip download`` of ``requirements`` as wheels for CPython ``python_version`` on manylinux x86_64."""
    abi = "cp" + python_version.replace(".", "")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--no-deps", "--python-version", python_version,
            "--implementation", "cp", "--abi", abi, "--abi", "abi3", "--abi", "none", *platforms, "--platform", "any",
            "--dest", str(dest), *requirements]


def held(requirement: str, dest: Path) -> bool:
    """Whether ``dest`` holds a pure-Python wheel of ``requirement`` (``name==version``)."""
    name, _, release = requirement.partition("==")
    prefix = f"{name.replace('-', '_').lower()}-{release}-"
    return any(w.name.lower().startswith(prefix) and w.name.endswith("-none-any.whl") for w in dest.glob("*.whl"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO / ".whl" / "gpu")
    parser.add_argument("--python-version", default="3.12", help="the device image's Python (default %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command only")
    args = parser.parse_args(argv)
    requirements = pins()
    if missing():
        raise SystemExit(f"gpu_bundle: the bundle is not closed, add to PACKAGES: {missing()}")
    if args.dry_run:
        print(" ".join(download_command(requirements, args.dest, args.python_version)))
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    failed = []
    for requirement in requirements:
        if subprocess.run(download_command([requirement], args.dest, args.python_version), capture_output=True).returncode == 0:
            continue
        if held(requirement, args.dest):  # built by an earlier run
            continue
        # no wheel on the index (antlr4-python3-runtime 4.9.3 is a source distribution): build one here, usable there
        # only if pure Python
        before = set(args.dest.glob("*.whl"))
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(args.dest), requirement],
                               capture_output=True, text=True)
        new = set(args.dest.glob("*.whl")) - before
        if built.returncode != 0 or not new or not all(w.name.endswith("-none-any.whl") for w in new):
            failed.append(requirement)
            for w in new:
                w.unlink()
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {args.dest}" + (f"; NOT FOUND: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
