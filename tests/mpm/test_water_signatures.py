"""tphys.mpm.water types the C functions it calls (``_SIGNATURES``: ctypes converts plain ints and floats): each
signature must be the C prototype's, argument by argument (a double read as an int64 would pass garbage)."""

from __future__ import annotations

import re

import pytest
import torch

from tphys.kernels import c_kernels
from tphys.mpm import water

SOURCES = (water.SOURCE, c_kernels.SOURCE)


def kinds(name: str) -> str:
    text = "".join(source.read_text() for source in SOURCES)
    found = re.findall(r"\bvoid " + name + r"\(([^)]*)\)", text)
    assert len(found) == 1, name
    args = [a.strip() for a in found[0].split(",")]
    return "".join("P" if "*" in a else "I" if a.startswith("int64_t") else "D" if a.startswith("double") else "?" for a in args)


@pytest.mark.parametrize("name", sorted(water._SIGNATURES))
def test_each_signature_is_the_c_prototype(name):
    assert water._SIGNATURES[name] == kinds(name)


@pytest.mark.skipif(not water.available(torch.float32), reason="no C compiler")
def test_the_typed_functions_load_for_both_float_types_and_leave_the_shared_ones_untyped():
    for dtype in (torch.float32, torch.float64):
        real = c_kernels.REALS[dtype]
        typed = water._functions(real)
        assert all(hasattr(typed[0 if name.startswith("water") else 1], name) for name in water._SIGNATURES)
        assert c_kernels.build(c_kernels.SOURCE, real).p2g_forward.argtypes is None
