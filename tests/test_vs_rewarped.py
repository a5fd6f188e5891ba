"""benchmarks/vs_rewarped.py's pieces that need no Rewarped (no timing): the action gradients of Rewarped's protocol
(zeros where the rewards do not depend on an action, nothing raised) and the variants' env options."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import vs_rewarped  # noqa: E402


def test_action_gradients_are_zero_where_the_rewards_do_not_depend_on_the_actions():
    actions = [torch.rand(2, 3, requires_grad=True) for _ in range(2)]
    constant = torch.tensor(1.5)  # e.g. RollingPin at N = 1: the roller above the dough for both steps
    for grads in (vs_rewarped.action_gradients(constant, actions), vs_rewarped.action_gradients(0.0, actions)):
        assert all(torch.equal(g, torch.zeros(2, 3)) for g in grads)
    grads = vs_rewarped.action_gradients((2 * actions[1]).sum(), actions)  # the first action unused
    assert torch.equal(grads[0], torch.zeros(2, 3)) and torch.equal(grads[1], torch.full((2, 3), 2.0))
    with pytest.raises(FloatingPointError):
        vs_rewarped.action_gradients((actions[0] * float("nan")).sum(), actions)


def test_variant_options_and_every_task_has_a_recipe_row():
    assert vs_rewarped.variant_options("hopper", "eager") == {"validate": False}
    assert vs_rewarped.variant_options("hopper", "compiled") == {"validate": False, "compile_substep": True}
    assert vs_rewarped.variant_options("hand_flip", "recompute=substep") == {"validate": False, "recompute": "substep"}
    assert vs_rewarped.variant_options("soft_jumper", "recipe") == vs_rewarped.recipe_options("soft_jumper")
    assert vs_rewarped.variant_options("soft_jumper", "recipe@threads=2") == vs_rewarped.recipe_options("soft_jumper")
    assert vs_rewarped.split_threads("recipe@threads=2") == ("recipe", 2) and vs_rewarped.split_threads("eager") == ("eager", 1)
    for name, task in vs_rewarped.TASKS.items():
        assert "recipe" in task.fwd and "recipe" in task.fwdbwd, name
        assert vs_rewarped.cell_function(name, "recipe").__name__ == "cell"


def test_the_cpu_clock_wrapper_does_not_count_sleep(tmp_path):
    """``benchmarks/cpu_clock.py`` gives the wrapped script the process CPU clock in place of ``time.time``: a 0.3 s
    sleep (what a cell waiting for a busy core looks like) adds next to nothing, its arguments reach the script."""
    import subprocess

    script = tmp_path / "timing.py"
    script.write_text("import sys, time\nt0 = time.time()\ntime.sleep(0.3)\nprint(time.time() - t0, sys.argv[1:])\n")
    out = subprocess.run([sys.executable, str(vs_rewarped.CPU_CLOCK), str(script), "a", "b"], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=1)
    assert float(out[0]) < 0.1 and out[1].strip() == "['a', 'b']"
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert float(plain) >= 0.3


def test_the_rewarped_cell_runs_through_the_cpu_clock_unless_wall_is_asked(monkeypatch):
    import argparse
    import subprocess

    seen = []
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    def run(cmd, **kw):
        seen.append((cmd, kw["env"]["VS_REWARPED_CLOCK"], kw["env"].get("OMP_WAIT_POLICY")))
        if cmd[0] != "/r/python":  # ours import this tree's tphys, whatever the venv's editable install points to
            assert kw["env"]["PYTHONPATH"].split(os.pathsep)[0] == str(vs_rewarped.REPO)
        return subprocess.CompletedProcess(cmd, 1, "", "x")

    monkeypatch.setattr(subprocess, "run", run)
    for clock in ("cpu", "wall"):
        args = argparse.Namespace(clock=clock, seconds=1.0, cell_timeout=10.0, rewarped_python=Path("/r/python"),
                                  tphys_python=Path("/user/bin/python"))
        vs_rewarped.measure_cell(args, "ant", 32, "rewarped", 16, "fwd")
        vs_rewarped.measure_cell(args, "ant", 32, "recipe", 16, "fwd")
        vs_rewarped.measure_cell(args, "ant", 32, "recipe@threads=2", 16, "fwd")
    (rew_cpu, c1, w1), (ours_cpu, c2, w2), (ours_k, c3, w3), (rew_wall, c4, w4), (ours_wall, c5, w5), (_, c6, w6) = seen
    assert (w1, w2, w3, w4, w5, w6) == (None, None, "PASSIVE", None, None, "PASSIVE")  # only K threads: OpenMP must not spin
    assert rew_cpu[:3] == ["/r/python", str(vs_rewarped.CPU_CLOCK), str(vs_rewarped.REWARPED_BENCH)]
    assert rew_wall[:2] == ["/r/python", str(vs_rewarped.REWARPED_BENCH)]
    for ours, variant in ((ours_cpu, "recipe"), (ours_k, "recipe@threads=2"), (ours_wall, "recipe")):  # tphys runs tphys
        assert ours[0] == "/user/bin/python" and ours[ours.index("--cell") + 1] == f"16,fwd,{variant}"
    assert (c1, c2, c3, c4, c5, c6) == ("cpu", "cpu", "wall", "wall", "wall", "wall")


def test_stored_cells_stand_in_only_where_reuse_allows(tmp_path, monkeypatch):
    """A run stores every measured cell; ``--reuse rewarped`` takes Rewarped's stored cells (any commit) and measures ours;
    ``--reuse all`` also takes our cells of this very commit (resume); a cell of another CPU model, clock or N, or a failed
    one, never stands in."""
    import argparse

    measured = []

    def fake_measure(args, task, horizon, system, n, mode):
        measured.append((system, n))
        return {"system": system if system == "rewarped" else f"tphys {system}", "num_envs": n, "mode": mode, "steps_per_s": 10.0 * n}

    monkeypatch.setattr(vs_rewarped, "measure_cell", fake_measure)
    commit = ["aaaaaaa"]
    monkeypatch.setattr(vs_rewarped, "git_commit", lambda: commit[0])
    monkeypatch.setattr(vs_rewarped, "same_code", lambda stored: stored == commit[0])  # a new commit changes the code
    store = tmp_path / "cells.jsonl"

    def run(reuse, system, n=16, clock="cpu", venv=".venv"):
        args = argparse.Namespace(clock=clock, seconds=5.0, reuse=reuse, store=store, stored=vs_rewarped.load_store(store),
                                  tphys_python=Path(f"/repo/{venv}/bin/python"))
        return vs_rewarped.run_cell(args, "ant", 32, system, n, "fwdbwd")

    first = run("none", "rewarped")
    assert "reused" not in first and measured == [("rewarped", 16)]
    assert run("rewarped", "rewarped")["reused"] and len(measured) == 1  # Rewarped's cell stands in
    commit[0] = "bbbbbbb"
    assert run("rewarped", "rewarped")["steps_per_s"] == first["steps_per_s"] and len(measured) == 1  # across commits
    run("rewarped", "recipe")
    assert measured[-1] == ("recipe", 16)  # ours is measured under --reuse rewarped
    run("rewarped", "recipe")
    assert len(measured) == 3  # ... every time
    assert run("all", "recipe")["reused"] and len(measured) == 3  # --reuse all: this commit's cell (resume)
    run("all", "recipe", venv=".venv-user")
    assert len(measured) == 4  # ... of the same venv only (a dev venv's Triton adds ~80 MB)
    assert run("rewarped", "rewarped", venv=".venv-user")["reused"] and len(measured) == 4  # Rewarped's cells: any venv
    commit[0] = "ccccccc"
    run("all", "recipe")
    assert len(measured) == 5  # a cell of ours measured with other code never stands in
    for changed in ({"n": 64}, {"clock": "wall"}):
        run("rewarped", "rewarped", **changed)
    assert len(measured) == 7
    monkeypatch.setattr(vs_rewarped, "cpu_model", lambda: "another CPU")
    run("rewarped", "rewarped")
    assert len(measured) == 8  # measured on another machine: not reused
    monkeypatch.setattr(vs_rewarped, "measure_cell", lambda *a: {"system": "rewarped", "error": "killed"})
    before = store.read_text()
    run("none", "rewarped", n=1)
    assert store.read_text() == before  # failures are not stored


def test_same_code_compares_the_code_paths_with_the_working_tree():
    """A tphys cell stands in only for the code it ran: HEAD's own commit is the same code (a clean tree here is not
    needed: the diff is against the working tree), a dirty or unknown commit never is, nor one whose tphys/ differs."""
    import subprocess

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=vs_rewarped.REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *vs_rewarped.CODE_PATHS], cwd=vs_rewarped.REPO,
                           capture_output=True, text=True).stdout.strip()
    assert vs_rewarped.same_code(head) == (dirty == "")
    assert not vs_rewarped.same_code(head + "-dirty") and not vs_rewarped.same_code("unknown") and not vs_rewarped.same_code("")
    first = subprocess.run(["git", "rev-list", "--max-parents=0", "HEAD"], cwd=vs_rewarped.REPO, capture_output=True,
                           text=True).stdout.split()[0]
    assert not vs_rewarped.same_code(first)  # the first commit's tphys/ is not today's
