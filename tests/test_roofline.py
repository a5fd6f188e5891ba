"""benchmarks/roofline.py's counting (no timing): the flops and bytes of one env step from a model's sizes."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import roofline  # noqa: E402

import tphys.envs as E  # noqa: E402


def test_rope_counts_follow_the_documented_formula_on_a_two_mass_rope():
    env = E.make("rope3d", num_envs=1, seed=0, dtype=torch.float32, masses=2, substeps=3, validate=False)
    sizes = roofline.model_sizes(env)
    assert roofline.family_of(env) == "particles"
    # handle + 2 masses: 2 damped cables + 1 undamped bending spring, 2 free particles, no drag; semi-implicit, so the
    # state is x, v of 3 particles in 3-D (x_prev, v_prev are the input's x, v)
    assert (sizes["particles"], sizes["free"], sizes["springs"], sizes["substeps"]) == (3, 2, 3, 3)
    assert (sizes["damped"], sizes["cables"], sizes["drag"]) == (2, 2, 0)
    assert sizes["state"] == 2 * 3 * 3 and sizes["action"] == 2
    c = roofline.counts("particles", sizes)
    assert c.flops == 3 * (roofline.SPRING_FLOPS * 3 + (roofline.DAMPING_FLOPS + roofline.SLACK_FLOPS) * 2
                           + roofline.PARTICLE_BASE_FLOPS * 2)
    io = sizes["action"] + sizes["observation"] + 1
    assert c.bytes_step == 4 * (2 * 18 + io)
    assert c.bytes_substep == 4 * (3 * 2 * 18 + io)
    dragged = E.make("rope3d", num_envs=1, seed=0, masses=2, substeps=3, drag=0.5, integrator="bdf2", validate=False)
    sizes = roofline.model_sizes(dragged)  # drag counted; BDF2 carries x_prev, v_prev as state
    assert sizes["drag"] == 1 and sizes["state"] == 4 * 3 * 3
    assert c.intensity == c.flops / c.bytes_step


def test_every_family_counts_from_hand_written_sizes():
    base = dict(substeps=2, state=10, action=1, observation=4)
    fem = roofline.counts("FEM", dict(base, particles=4, tets=1))
    assert fem.flops == 2 * (roofline.TET_FLOPS + 4 * (roofline.PARTICLE_FLOPS + roofline.GROUND_FLOPS))
    rigid = roofline.counts("rigid", dict(base, links=2, nv=3, nq=4, contacts=1))
    per_substep = ((roofline.FK_FLOPS + roofline.RNEA_FLOPS + roofline.CRBA_LINK_FLOPS) * 2 + roofline.CONTACT_FLOPS
                   + 12 * 9 + 27 / 3 + 2 * 9 + 2 * 3 + 2 * 4 + 30)
    assert rigid.flops == pytest.approx(2 * per_substep)
    mpm = roofline.counts("MPM", dict(base, particles=5, nodes=7))
    assert mpm.flops == 2 * (roofline.MPM_PARTICLE_FLOPS * 5 + roofline.GRID_NODE_FLOPS * 7)
    assert mpm.bytes_substep == 4 * (2 * (2 * 10 + roofline.GRID_NODE_NUMBERS * 7) + 6)
    assert mpm.bytes_step == fem.bytes_step == rigid.bytes_step == 4 * (2 * 10 + 6)
    with pytest.raises(ValueError, match="unknown family"):
        roofline.counts("fluid", base)


def test_mpm_sizes_of_a_small_rolling_flat():
    env = E.make("rolling_flat", num_envs=1, seed=0, dtype=torch.float32, lattice=(4, 2, 4), grid_size=16, samples=8, substeps=2,
                 validate=False)
    sizes = roofline.model_sizes(env)
    assert roofline.family_of(env) == "MPM"
    assert sizes["particles"] == 32 and 0 < sizes["nodes"] <= 16**3
    assert sizes["state"] == 32 * (3 + 3 + 9 + 9) + 3  # x, v, c, f and the tool's joint_q
    assert roofline.counts("MPM", sizes).flops > 0


def test_the_bound_takes_the_higher_of_the_gemm_rate_and_the_multiply_add_peak():
    c = roofline.Counts(flops=1000.0, bytes_step=100.0, bytes_substep=400.0)
    slow_gemm = dict(gemm=1e9, peak=4e9, dram=1e9)  # torch's GEMM well under the core's peak (an AMD host's MKL)
    assert roofline.flop_rate(slow_gemm) == 4e9
    assert roofline.bound_rate(c, roofline.flop_rate(slow_gemm), slow_gemm["dram"]) == (4e6, "flops")
    assert roofline.flop_rate(dict(slow_gemm, peak=None)) == 1e9  # no C compiler: the GEMM's rate
    assert roofline.flop_rate(dict(slow_gemm, gemm=8e9)) == 8e9
    assert roofline.bound_rate(c, 1e12, 1e9) == (1e7, "bytes")


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on PATH")
def test_the_multiply_add_peak_probe_runs_and_gives_a_plausible_rate():
    rate = roofline.peak_rate(1, seconds=0.01, iterations=20_000)
    assert rate is not None  # with a compiler on PATH the probe must build (None would hide a broken fma_peak.c)
    # a loop the compiler folded away would report an absurd rate; one core does 1e9-1e12 flop/s
    assert 1e8 < rate < 2e12
    two = roofline.peak_rate(2, seconds=0.01, iterations=20_000)
    assert 1e8 < two < 4e12
