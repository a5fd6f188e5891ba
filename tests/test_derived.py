"""tphys.derived.per_tensor: derived once per tensor and version."""

import torch

from tphys.derived import per_tensor


def test_a_value_is_derived_once_per_tensor_and_again_after_an_in_place_edit():
    calls = []
    total = per_tensor(lambda t: calls.append(1) or float(t.sum()), size=2)
    a, b = torch.ones(3), torch.zeros(2)
    assert total(a) == 3.0 and total(a) == 3.0 and len(calls) == 1
    a.add_(1.0)  # in place: the version moves
    assert total(a) == 6.0 and len(calls) == 2
    assert total(b) == 0.0 and len(calls) == 3
    c = torch.full((1,), 5.0)
    assert total(c) == 5.0 and len(calls) == 4  # a third tensor: the oldest entry (a) is dropped
    assert total(a) == 6.0 and len(calls) == 5
    assert total(c) == 5.0 and len(calls) == 5
