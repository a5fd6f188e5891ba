"""benchmarks/particle_split.py: the parts of a fused particle step add up to what was timed."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import particle_split  # noqa: E402


def test_the_parts_add_up_to_the_env_step():
    times = {"physics_step": 10.0, "fresh": 8.0, "kernel": 7.5, "transposes": 1.0, "no_math": 4.0}
    parts = particle_split.split(times)
    assert parts["spring math"] == 3.5 and parts["skeleton (loads, force sums, updates, stores, loop)"] == 3.0
    assert parts["transposes and set-up"] + parts["skeleton (loads, force sums, updates, stores, loop)"] + parts["spring math"] \
        == pytest.approx(parts["C call"])
    around = parts["Python and torch around the C call"] + parts["fresh output tensors (allocation, cold writes)"]
    assert around + parts["C call"] == pytest.approx(parts["physics_step"])


def test_the_profiling_build_changes_only_the_spring_math():
    """-DTPHYS_PROFILE_NO_SPRING_MATH is a profiling build: the default build (what tphys loads) is untouched by it."""
    from tphys.kernels import c_kernels, particle_kernels, particle_unrolled

    sources = [(c_kernels.CPU_DIR / name).read_text() for name in ("particles.c", particle_unrolled.HEADER)]
    assert [text.count(particle_split.PROFILE_FLAG[2:]) for text in sources] == [0, 1]  # in spring_tension, both paths'
    assert not any("PROFILE" in flag for flag in particle_kernels.FLAGS)
