"""``cpu/kernels.c`` contracts multiply-adds into FMAs in the transfer loops only (its ``fp-contract`` pragma): the SVD,
the 3x3 products and plasticine's stress after them give, bit for bit, what the file compiled without the pragma gives;
the transfers still equal their torch twins (``test_c_transfer_twins``)."""

import re

import pytest
import torch

from tphys.kernels import c_kernels

pytestmark = pytest.mark.skipif(not c_kernels.available(torch.float64), reason="no C compiler")

PRAGMA_LINES = re.compile(r"^#pragma (GCC (push_options|pop_options|optimize.*)|clang fp contract.*)$", re.M)


def without_pragma(tmp_path):
    """The library built from kernels.c with its contraction pragmas removed."""
    text = c_kernels.SOURCE.read_text()
    assert len(PRAGMA_LINES.findall(text)) >= 3, "kernels.c names its contraction scope with pragmas"
    source = tmp_path / "kernels_plain.c"
    source.write_text(PRAGMA_LINES.sub("", text))
    return c_kernels.build(source, "double")


def test_svd_products_and_plasticine_stress_are_untouched_by_the_transfers_contraction(tmp_path, monkeypatch):
    monkeypatch.setenv("TPHYS_KERNEL_CACHE", str(tmp_path / "cache"))
    plain = without_pragma(tmp_path)
    gen = torch.Generator().manual_seed(3)
    f = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(64, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(64, 3, 3, generator=gen, dtype=torch.float64)
    results = []
    for library in (lambda real: c_kernels.build(c_kernels.SOURCE, real), lambda real: plain):
        u, v, s = torch.empty_like(f), torch.empty_like(f), f.new_empty(64, 3)
        c_kernels.call("svd3", f, u, s, v, 64, library=library)
        product = torch.empty_like(f)
        c_kernels.call("matmul3", f, b, product, 64, 1, 0, library=library)
        outs = [torch.empty_like(f) for _ in range(5)] + [f.new_empty(64, 3), f.new_empty(64, 3)]
        fo, tau, uo, vo, jac, so, go = outs
        c_kernels.call("plasticine_stress", f, fo, tau, uo, so, vo, go, jac, 64, 300.0, 500.0, 1.0, 1e-4, library=library)
        results.append([u, s, v, product, *outs])
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


def test_the_transfers_are_contracted():
    """The pragma opens before the transfers and closes before the SVD (a pragma moved or dropped fails here)."""
    text = c_kernels.SOURCE.read_text()
    opened, closed = text.index('#pragma GCC optimize("fp-contract=fast")'), text.index("#pragma GCC pop_options")
    for name in ("void p2g_forward(", "void p2g_backward(", "void g2p_forward(", "void g2p_backward("):
        assert opened < text.index(name) < closed
    for name in ("void svd3(", "void matmul3(", "void plasticine_stress("):
        assert text.index(name) > closed
