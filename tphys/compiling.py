"""``torch.compile`` as the engines use it: one substep (or one fused forward / backward), fixed shapes, and
Inductor's code cached on disk across processes.

* ``compile_fixed(fn)``: ``torch.compile(fn, dynamic=False)``, kernels called from C++ (``cpp_wrapper``) and fused
  more (``aggressive_fusion``), after ``use_cache_dir()``; the frames and substeps around it stay a Python loop
  (compiling an unrolled rollout makes Inductor's code generation grow with the unroll: a whole 16-substep Ant frame
  did not finish compiling in 18 minutes on a 2-core CPU, one substep compiles in 1-5 minutes cold and seconds from
  the cache).
* ``use_cache_dir()``: Inductor's on-disk cache goes to ``$TORCHINDUCTOR_CACHE_DIR`` when the user set it, else to
  ``~/.cache/tphys/inductor`` (``$XDG_CACHE_HOME`` honoured), which survives reboots, unlike torch's default in
  ``/tmp``. A second process (an evaluation, a resumed run, another seed) loads the compiled code instead of
  compiling again.
* ``cache_dir()``: where that is, for progress messages.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

CACHE_VARIABLE = "TORCHINDUCTOR_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/tphys/inductor`` (default ``~/.cache/tphys/inductor``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tphys" / "inductor"


def use_cache_dir() -> Path:
    """Point Inductor's cache at ``default_cache_dir()`` unless ``$TORCHINDUCTOR_CACHE_DIR`` is set; returns the
    directory in use. Inductor reads the variable when it first compiles, so this runs before any compile."""
    if not os.environ.get(CACHE_VARIABLE):
        os.environ[CACHE_VARIABLE] = str(default_cache_dir())
    return cache_dir()


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_VARIABLE) or default_cache_dir())


def compile_fixed(fn: Callable, cpp_wrapper: bool = True, aggressive_fusion: bool = True) -> Callable:
    """``torch.compile(fn, dynamic=False)`` with the on-disk cache of ``use_cache_dir()``: one compilation per
    input shape (per batch size), reused by later processes.

    ``cpp_wrapper`` (Inductor's option, default on): the compiled graph's kernels are called from generated C++
    instead of a generated Python function. A substep's graph is hundreds of small kernels at the envs' batch
    sizes, and the Python call around each one was most of its time: a compiled Ant substep, N = 16, fwd+bwd, took
    2.07 ms with it against 3.83 ms without (1 thread, same load; ``benchmarks/substep_ab.py``, issue 21).
    ``aggressive_fusion`` (Inductor's option, default on): fuse nodes that share no memory too, so fewer and larger
    kernels: the same substep took 2.12 ms against 2.69 ms with the C++ wrapper alone (process CPU time, load 4, cold
    compile 268 vs 280 s; ``benchmarks/substep_ab.py``)."""
    use_cache_dir()
    return torch.compile(fn, dynamic=False, options={"cpp_wrapper": cpp_wrapper, "aggressive_fusion": aggressive_fusion})
