"""Mutation testing of the code where a wrong line silently corrupts results (issue 22), on mutmut 3.

Each scoped module (a source file: the engines' force / contact / integrator / material code, the kernels'
torch twins, the returns and losses, the trainers' update rules, the evaluation) is mutated by mutmut and
each mutant is run against the test files mapped to that module below (not the whole suite; mutmut
further narrows to the tests that reach the mutated function). A mutant some test fails on is killed;
one all its tests pass on survived.

    python benchmarks/mutation.py                     # run every module (resumes); prints the table
    python benchmarks/mutation.py --modules rigid_contact returns --minutes 30
    python benchmarks/mutation.py --report            # rewrite the section of benchmarks/RESULTS.md
    python benchmarks/mutation.py --list              # modules, their test files, results so far

Resumable: after every mutant the verdicts are written to ``benchmarks/mutation/<module>.json``
(committed; mutant name, status, the changed line). A later run copies the tree into a scratch
work directory (``--workdir``, default ``runs/mutation``, never kept), seeds mutmut's own result files
from those JSON files and tests only what has no verdict yet: mutants of functions whose source
changed (mutmut hashes each function), survivors (tests may have been added since) and new mutants.
``--minutes`` stops cleanly; the next run continues.

Equivalent mutants (no behaviour can tell them apart from the original) are listed with their
reason in ``benchmarks/mutation/equivalent.json`` and left out of the score; an entry counts only
while the mutant's changed line is still the one recorded.

Slow job: never part of the default pytest run. One worker process (``--max-children 1``) under
``nice``; OMP_NUM_THREADS=1.

The C sources (``tphys/kernels/cpu/kernels.c``) are out of mutmut's reach (Python only): ``--c`` runs a small
operator-swap mutator of ours (``+``/``-``, ``*``/``/``, comparisons, compound assignments, constants, axis
indices) over the transfer loops, an evenly spaced sample of ``--c-limit`` mutants, each rebuilt by the system
compiler into a scratch kernel cache and run against ``tests/kernels/test_c_transfer_twins.py`` (C == torch twin,
value and gradient); verdicts in ``benchmarks/mutation/c_kernels.json``.

    python benchmarks/mutation.py --c --c-limit 40      # C mutants (resumes: killed ones are not rerun)
    python benchmarks/mutation.py --known               # the hand-found survivors, old tests vs new tests
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "mutation"
EQUIVALENT = RESULTS_DIR / "equivalent.json"
RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- mutation:begin (benchmarks/mutation.py --report) -->", "<!-- mutation:end -->"


@dataclass
class Module:
    source: str  # the file mutmut mutates
    tests: list[str]  # pytest selections (files or node ids) run against its mutants
    note: str = ""
    functions: list[str] | None = None  # mutate only these functions of the file (None: all of it)
    extra: list[str] = field(default_factory=list)  # extra pytest args


def function_of(mutant: str) -> str:
    """``pkg.mod.x_fn__mutmut_3`` -> ``fn``; methods (``xǁClassǁfn``) -> ``fn``."""
    mangled = mutant.partition("__mutmut_")[0].rsplit(".", 1)[-1]
    return mangled.split("ǁ")[-1] if "ǁ" in mangled else mangled.removeprefix("x_")


def in_scope(mod: Module, mutant: str) -> bool:
    return mod.functions is None or function_of(mutant) in mod.functions


# module -> the tests that cover it. Fast, targeted files: a mutant runs only these (and of these only the
# tests mutmut saw reach the mutated function). Hypothesis tests are left out where a fast test covers the same
# law: a mutant that fails one makes Hypothesis shrink the failing example, minutes per mutant on 2 cores.
MODULES: dict[str, Module] = {
    "rigid_contact": Module("tphys/rigid/contact.py",
                            ["tests/rigid/test_friction_laws.py",
                             "tests/rigid/test_invariants.py::test_dropped_shape_comes_to_rest_at_the_analytic_penetration"],
                            "rigid ground contact: penalty normal force, viscous-Coulomb friction"),
    "particle_ground": Module("tphys/particles/forces.py",
                              ["tests/particles/test_ground_contact_laws.py"],
                              "particles' ground contact: penalty normal force with C1 ramps, smooth Coulomb friction",
                              functions=["ground_forces"]),
    "returns": Module("rl/objectives/returns.py", ["tests/rl/test_returns.py", "tests/rl/test_returns_closed_form.py"],
                      "TD(lambda) targets, discounted window returns"),
    "shac": Module("rl/objectives/shac.py", ["tests/rl/test_losses.py", "tests/rl/test_update_rules.py"],
                   "SHAC loss: actor / critic losses, target-network update rule"),
    "pods_line_search": Module("rl/objectives/trajectory.py",
                               ["tests/rl/test_acceptance_rules.py",
                                "tests/rl/test_pods.py::test_first_order_line_search_starts_where_configured_and_halves"],
                               "PODS acceptance rule: backtracking line search (strict improvement, Armijo, halving)",
                               functions=["backtracking_line_search"]),
    "kernel_twins": Module("tphys/kernels/stencil.py",
                           ["tests/kernels/test_c_transfer_twins.py", "tests/kernels/test_twin_input_checks.py",
                            "tests/kernels/test_transfer.py::test_p2g_then_g2p_reproduces_an_affine_velocity_field_exactly[torch]",
                            "tests/kernels/test_transfer.py::test_p2g_conserves_mass_and_momentum[torch]"],
                           "MPM transfers' torch twins (P2G, G2P), held equal to the C loops", functions=["p2g_torch", "g2p_torch"]),
    "evaluation": Module("rl/trainers/evaluation.py",
                         ["tests/rl/test_trainer.py::test_confidence_interval_matches_student_t",
                          "tests/rl/test_trainer.py::test_evaluate_counts_full_episodes",
                          "tests/rl/test_evaluation_per_episode.py"],
                         "evaluation: per-episode returns up to the first done, mean / CI"),
    "rigid_dynamics": Module("tphys/rigid/dynamics.py", ["tests/rigid/test_dynamics_laws.py"],
                             "rigid joint-space dynamics: mass matrix, bias (Coriolis, gravity, external wrenches), passive, "
                             "limit and actuator forces, qdd (MuJoCo references at fixed states, hand computations)"),
    "rigid_integrator": Module("tphys/rigid/integrator.py", ["tests/rigid/test_dynamics_laws.py"],
                               "rigid substep: semi-implicit Euler, position update (quaternions), joint / contact / muscle "
                               "forces, substeps of a frame (compiled_substep, a torch.compile wrapper, left out)",
                               functions=["integrate_positions", "generalized_forces", "external_forces", "substep", "step"]),
    "particle_integrators": Module("tphys/particles/integrators.py", ["tests/particles/test_integrator_laws.py"],
                                   "particle integrators: semi-implicit Euler, BDF1/BDF2 kinematics, incremental potential (bdf2's own "
                                   "body, 202 mutants of Newton / pytree plumbing, left out for time; its equations are checked "
                                   "by the residual test)",
                                   functions=["handle_velocity_field", "semi_implicit_euler", "default_tolerance",
                                              "_incremental_potential", "_bdf_kinematics"]),
    "particle_springs": Module("tphys/particles/forces.py", ["tests/particles/test_spring_laws.py"],
                               "particle springs (Hooke, axial damping, C1 cables), smooth ramp / step, force and energy sums",
                               functions=["smooth_ramp", "smooth_step", "_smooth_ramp_integral", "spring_forces", "spring_energy",
                                          "kinetic_energy", "total_forces", "potential_energy"]),
    "fem": Module("tphys/particles/fem.py", ["tests/particles/test_fem_laws.py"],
                  "tetrahedral FEM: deformation gradient, stable neo-Hookean energy and forces, damping, active fibers"),
    "mpm_materials": Module("tphys/mpm/materials.py", ["tests/mpm/test_material_laws.py"],
                            "MPM materials: Lame parameters, return mappings (plasticine von Mises, sand Drucker-Prager, water), "
                            "Kirchhoff stresses, one-SVD elastic stress (the fused C path's autograd.Function _PlasticineStress left out: "
                            "its forward is a C call, its hand-written backward is held to the torch twin by test_materials.py)",
                            functions=["from_young", "_hencky", "_safe_norm", "_plastic_flow", "project", "kirchhoff_stress",
                                       "elastic_stress"]),
    "muscles": Module("tphys/rigid/muscles.py", ["tests/rigid/test_muscle_laws.py"],
                      "rigid muscles: via points, path lengths, link forces, tensions, moment arms (the tendon Jacobian) and "
                      "their joint forces (build_muscles, the model builder, left out for time)",
                      functions=["via_points", "_segments", "path_lengths", "link_forces", "tensions", "moment_arms",
                                 "generalized_forces"]),
    "sapo": Module("rl/objectives/sapo.py", ["tests/rl/test_losses.py", "tests/rl/test_sapo_update_rules.py"],
                   "SAPO loss: soft returns with the normalized entropy, temperature loss, critic targets",
                   functions=["scaled_entropy", "forward"]),
    "first_order": Module("rl/trainers/first_order.py",
                          ["tests/rl/test_trainer_update_rules.py", "tests/rl/test_guard.py",
                           "tests/rl/test_trainer.py::test_nonfinite_gradient_is_reported_and_never_trained_on"],
                          "first-order trainer's window: actor + temperature step, grad clip, critic mini-epochs",
                          functions=["step", "train_critic"]),
    "loop_updates": Module("rl/trainers/loop.py", ["tests/rl/test_trainer_update_rules.py"],
                           "trainer loop: learning-rate schedule, gradient-norm clipping",
                           functions=["learning_rates", "set_learning_rates", "clip_grad_norm"]),
}

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault",
          37: "caught by type check", None: "not checked"}
DETECTED = {"killed", "timeout", "segfault", "caught by type check"}  # the tests noticed
KEEP = {"killed", "timeout", "segfault", "caught by type check"}  # verdicts a later run trusts (survivors are retested)


def status_of(code) -> str:
    return STATUS.get(code, "suspicious")


def results_path(key: str) -> Path:
    return RESULTS_DIR / f"{key}.json"


def load_results(key: str) -> dict:
    p = results_path(key)
    return json.loads(p.read_text()) if p.exists() else {}


def load_equivalent() -> dict[str, dict]:
    return json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}


def git_head(tree: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"


def mutmut_config(mod: Module, root: Path) -> str:
    tests = [t for t in mod.tests if (root / t.split("::")[0]).exists()]  # a test file not written yet is skipped
    def arr(xs):
        return "[" + ", ".join(json.dumps(x) for x in xs) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["tphys", "rl"]\n'
        f"only_mutate = {arr([mod.source])}\n"
        f"pytest_add_cli_args_test_selection = {arr(tests)}\n"
        f"pytest_add_cli_args = {arr(['-p', 'no:cacheprovider', '-p', 'no:xdist', '-p', 'no:randomly'] + mod.extra)}\n"
        'also_copy = ["recipes"]\n'
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
    )


TREE = ("tphys", "rl", "tests", "recipes")  # recipes: the Hydra configs some tests compose


def fresh_tree(source: Path, tree: Path, dirs=TREE) -> Path:
    """An emptied ``tree`` holding copies of ``source``'s ``dirs`` and its pyproject.toml (no caches): a scratch
    tree a mutant is written into."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    for d in dirs:
        shutil.copytree(source / d, tree / d, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis"))
    shutil.copy2(source / "pyproject.toml", tree / "pyproject.toml")
    return tree


def unchecked(m: dict) -> dict:
    """A mutant's record without a verdict (the time budget ran out before it)."""
    return {k: m[k] for k in ("id", "line", "original", "mutated")} | {"status": None}


def prepare_workdir(key: str, mod: Module, source: Path, workdir: Path) -> Path:
    """Copy the tree into workdir/<key>, write mutmut's config there and seed its verdicts from our JSON."""
    wd = fresh_tree(source, workdir / key)  # its pyproject.toml is rewritten below with mutmut's config
    text = (source / "pyproject.toml").read_text()
    if "[tool.mutmut]" in text:
        text = text[: text.index("[tool.mutmut]")]
    (wd / "pyproject.toml").write_text(text + mutmut_config(mod, source))
    old = load_results(key)
    if old.get("function_hashes"):
        equivalent = load_equivalent()
        codes = {}
        for name, m in old.get("mutants", {}).items():
            if m["status"] in KEEP or (name in equivalent and equivalent[name].get("change") == m.get("change")):
                codes[name] = m["exit_code"]
        meta = wd / "mutants" / (mod.source + ".meta")
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes, "hash_by_function_name": old["function_hashes"],
                                    "type_check_error_by_key": {}, "durations_by_key": {},
                                    "estimated_durations_by_key": {}}))
    return wd


DIFF_SCRIPT = r"""
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, names = sys.argv[1], json.loads(sys.stdin.read())
out = {}
for n in names:
    try:
        d = get_diff_for_mutant(n, path=path)
    except Exception as e:  # a stale name: no diff
        d = f"?? {type(e).__name__}: {e}"
    out[n] = d
print(json.dumps(out))
"""


NAMES_SCRIPT = r"""
import json, sys
from pathlib import Path
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.format_utils import get_mutant_name
path = sys.argv[1]
m = mutate_file_contents(path, Path(path).read_text(), None, None)
print(json.dumps([[get_mutant_name(Path(path), n) for n in m.mutant_names], dict(m.hash_by_function_name)]))
"""


def mutant_names(mod: Module, wd: Path) -> tuple[list[str], dict[str, str]]:
    """The file's mutants in scope, and mutmut's hash of each function (a verdict holds while its function's hash does)."""
    r = subprocess.run([sys.executable, "-c", NAMES_SCRIPT, mod.source], cwd=wd, capture_output=True, text=True, check=True)
    names, hashes = json.loads(r.stdout)
    return [n for n in names if in_scope(mod, n)], hashes


def local_function(mutant: str) -> str:
    return mutant.partition("__mutmut_")[0].rsplit(".", 1)[-1]


def changed_lines(diff: str) -> str:
    """The mutant's changed lines from mutmut's unified diff: '-old' / '+new' lines, stripped."""
    keep = [ln for ln in diff.splitlines() if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    return "\n".join(ln[0] + " " + ln[1:].strip() for ln in keep)


def save_results(key: str, mod: Module, wd: Path, source: Path, diffs_cache: dict[str, str]) -> dict:
    meta_path = wd / "mutants" / (mod.source + ".meta")
    if not meta_path.exists():
        return load_results(key)
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:  # caught mid-write; the next poll gets it
        return load_results(key)
    codes = {n: c for n, c in meta["exit_code_by_key"].items() if in_scope(mod, n)}
    missing = [n for n in codes if n not in diffs_cache]
    if missing and (wd / "mutants" / (mod.source + ".spans")).exists():
        r = subprocess.run([sys.executable, "-c", DIFF_SCRIPT, mod.source], input=json.dumps(missing), cwd=wd,
                           capture_output=True, text=True)
        if r.returncode == 0:
            diffs_cache.update({n: changed_lines(d) for n, d in json.loads(r.stdout).items()})
    old = load_results(key).get("mutants", {})
    mutants = {}
    for name in sorted(codes, key=lambda n: (n.rsplit("_", 1)[0], int(n.rsplit("_", 1)[1]))):
        code, before = codes[name], old.get(name, {})
        # "first": the first verdict this mutant got (a survivor killed later by a new test shows survived -> killed)
        first = before.get("first") or (status_of(code) if code is not None else None)
        mutants[name] = {"status": status_of(code), "exit_code": code, "first": first,
                         "change": diffs_cache.get(name, before.get("change", ""))}
    data = {
        "module": key, "source": mod.source, "tests": mod.tests, "note": mod.note,
        "commit": git_head(source), "updated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "function_hashes": meta.get("hash_by_function_name", {}), "mutants": mutants,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = results_path(key).with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(results_path(key))
    return data


def run_module(key: str, source: Path, workdir: Path, deadline: float, poll_s: float = 20.0) -> bool:
    """Run mutmut on one module until done or the deadline; returns True when it finished."""
    mod = MODULES[key]
    wd = prepare_workdir(key, mod, source, workdir)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or "mutmut"
    names, hashes = mutant_names(mod, wd)
    previous = load_results(key)
    old, old_hashes = previous.get("mutants", {}), previous.get("function_hashes", {})
    equivalent = load_equivalent()

    def settled(n):
        if n not in old or old_hashes.get(local_function(n)) != hashes.get(local_function(n)):
            return False  # new, or its function changed since
        eq = equivalent.get(n)
        return old[n]["status"] in KEEP or (eq is not None and eq.get("change") == old[n].get("change"))

    pending = [n for n in names if not settled(n)]
    print(f"[{key}] {len(names)} mutants in scope, {len(pending)} without a verdict", flush=True)
    if not pending:
        return True
    # mutmut reruns every mutant it is given by name: we name only those without a kept verdict
    cmd = ["nice", "-n", "15", mutmut, "run", "--max-children", "1", *pending]
    log = open(wd / "mutmut.log", "w")
    print(f"[{key}] {mod.source} <- {' '.join(mod.tests)}  (log: {wd / 'mutmut.log'})", flush=True)
    proc = subprocess.Popen(cmd, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    diffs: dict[str, str] = {}
    finished = False
    try:
        while True:
            try:
                proc.wait(timeout=poll_s)
                finished = proc.returncode == 0
                break
            except subprocess.TimeoutExpired:
                save_results(key, mod, wd, source, diffs)
                if time.time() > deadline:
                    print(f"[{key}] out of time; stopping (the next run resumes)", flush=True)
                    break
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    data = save_results(key, mod, wd, source, diffs)
    if proc.returncode not in (0, None, -signal.SIGTERM):
        print(f"[{key}] mutmut exited {proc.returncode}; tail of the log:", flush=True)
        print("\n".join((wd / "mutmut.log").read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]))
    print(f"[{key}] {summary_line(key, data)}", flush=True)
    return finished


# Survivors found by hand review before the job existed (issue 22), some outside mutmut's reach (a config value):
# (name, file, old text, new text, tests that existed before, the tests written for it).
KNOWN = [
    ("contact friction coefficient dropped", "tphys/rigid/contact.py", "mat.contact_mu * mat.contact_ke * penetration",
     "mat.contact_ke * penetration",
     ["tests/rigid/test_invariants.py::test_dropped_shape_comes_to_rest_at_the_analytic_penetration"],
     ["tests/rigid/test_friction_laws.py"]),
    ("SHAC target rate replaced by its complement", "rl/objectives/shac.py", "p_target.lerp_(p, 1.0 - self.target_tau)",
     "p_target.lerp_(p, self.target_tau)",
     ["tests/rl/test_losses.py::test_shac_loss_equals_direct_eq_20_with_target_critic"],
     ["tests/rl/test_update_rules.py"]),
    ("PODS line search accepts a non-strict improvement", "rl/objectives/trajectory.py", "(trial_value > value)",
     "(trial_value >= value)",
     ["tests/rl/test_pods.py::test_line_search_never_accepts_a_step_that_lowers_the_value",
      "tests/rl/test_pods.py::test_first_order_line_search_starts_where_configured_and_halves"],
     ["tests/rl/test_acceptance_rules.py"]),
    ("PPO clip range 0.2 -> 0.3", "recipes/config/algo/ppo.yaml", "clip_epsilon: 0.2 ", "clip_epsilon: 0.3 ",
     ["tests/rl/test_baselines.py::test_configs_hold_table_2_and_pass_check_config",
      "tests/rl/test_paper_settings.py::test_ppo_and_sac_rows_not_pinned_in_test_baselines"],
     ["tests/rl/test_acceptance_rules.py::test_ppo_loss_settings_are_pinned"]),
    ("evaluation sums every step (no per-episode mask)", "rl/trainers/evaluation.py", "(reward.double() * alive).sum(1)",
     "reward.double().sum(1)",
     ["tests/rl/test_trainer.py::test_evaluate_counts_full_episodes"],
     ["tests/rl/test_evaluation_per_episode.py"]),
    ("evaluation drops the reward of the done step", "rl/trainers/evaluation.py",
     "alive = (torch.cumsum(done.long(), dim=1) - done.long()) == 0", "alive = torch.cumsum(done.long(), dim=1) == 0",
     ["tests/rl/test_trainer.py::test_evaluate_counts_full_episodes"],
     ["tests/rl/test_evaluation_per_episode.py"]),
]


def pytest_passes(tree: Path, tests: list[str]) -> bool:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
    cmd = ["nice", "-n", "15", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", *tests]
    return subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True).returncode == 0


def run_known(source: Path, workdir: Path) -> None:
    """Apply each hand-found mutant in a scratch copy; the tests that existed must pass (it survived them), the new
    ones must fail (they kill it). Writes benchmarks/mutation/known.json."""
    out = []
    for name, path, old, new, before, after in KNOWN:
        tree = fresh_tree(source, workdir / "known")
        text = (tree / path).read_text()
        if text.count(old) != 1:
            out.append({"mutant": name, "file": path, "error": f"{old!r} occurs {text.count(old)} times"})
            continue
        (tree / path).write_text(text.replace(old, new))
        check = subprocess.run([sys.executable, "-c", "import tphys, rl; print(tphys.__file__, rl.__file__)"], cwd=tree,
                               env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True).stdout
        assert check.count(str(tree)) == 2, f"imports do not resolve to the scratch copy: {check}"
        row = {"mutant": name, "file": path, "change": f"- {old}\n+ {new}", "old_tests": before, "new_tests": after,
               "old_tests_pass": pytest_passes(tree, before), "new_tests_pass": pytest_passes(tree, after)}
        row["verdict"] = ("survived the old tests, killed by the new" if row["old_tests_pass"] and not row["new_tests_pass"]
                          else "killed by the new tests" if not row["new_tests_pass"] else "SURVIVES the new tests")
        print(f"{name}: {row['verdict']}", flush=True)
        out.append(row)
    (RESULTS_DIR / "known.json").write_text(json.dumps(out, indent=1) + "\n")


# ----------------------------------------------------------------------------- C: a small operator-swap mutator
C_SOURCE = "tphys/kernels/cpu/kernels.c"
C_FUNCTIONS = ("stencil", "p2g_forward", "p2g_backward", "g2p_forward", "g2p_backward")  # the transfer loops
C_TESTS = ["tests/kernels/test_c_transfer_twins.py"]
C_SWAPS = [(" + ", " - "), (" - ", " + "), (" * ", " / "), (" / ", " * "), (" < ", " <= "), (" >= ", " > "),
           (" += ", " -= "), (" -= ", " += "), ("0.5", "1.5"), ("1.5", "0.5"), ("0.75", "0.25"), ("2.0", "1.0"),
           ("4.0", "2.0"), ("[0]", "[1]"), ("[1]", "[2]"), ("[2]", "[0]")]


def c_mutants(text: str) -> list[dict]:
    """Operator / constant / index swaps on the code lines of the transfer functions (comments skipped)."""
    lines, out, current = text.splitlines(), [], None
    for no, line in enumerate(lines, 1):
        head = line.split("(")[0].split()
        if line and not line[0].isspace() and head and head[-1] in C_FUNCTIONS and "{" in line.split(")")[-1] + lines[no][:0]:
            current = head[-1]
        elif line and not line[0].isspace() and (len(head) > 1 or line.startswith("#")):
            current = head[-1] if head and head[-1] in C_FUNCTIONS else None
        if current is None or line.lstrip().startswith(("/*", "*", "#", "//")):
            continue
        code = line.split("/*")[0]
        for old, new in C_SWAPS:
            start = code.find(old)
            while start >= 0:
                if not (old == " * " and code[:start].rstrip().endswith(("(", ","))):  # not a pointer declarator
                    mutated = line[:start] + new + line[start + len(old):]
                    out.append({"id": f"{current}:{no}:{start}:{old.strip()}->{new.strip()}", "line": no,
                                "original": line.strip(), "mutated": mutated.strip(), "text": mutated})
                start = code.find(old, start + 1)
    return out


def run_c(source: Path, workdir: Path, limit: int, deadline: float) -> None:
    """Mutate the C transfer loops one at a time (an evenly spaced sample of ``limit``), rebuild, run C_TESTS."""
    path = RESULTS_DIR / "c_kernels.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    done = {m["id"]: m for m in old.get("mutants", []) if m.get("status")}
    text = (source / C_SOURCE).read_text()
    candidates = c_mutants(text)
    step = max(1, len(candidates) / max(limit, 1))
    sample = [candidates[int(i * step)] for i in range(min(limit, len(candidates)))]
    tree = fresh_tree(source, workdir / "c", ("tphys", "tests"))
    lines = text.splitlines()
    results = []
    for m in sample:
        prior = done.get(m["id"])
        if prior and prior.get("original") == m["original"] and prior["status"] == "killed":
            results.append(prior)
            continue
        if time.time() > deadline:
            results.append(unchecked(m))
            continue
        mutated = lines.copy()
        mutated[m["line"] - 1] = m["text"]
        (tree / C_SOURCE).write_text("\n".join(mutated) + "\n")
        cache = tree / "kernel-cache"
        shutil.rmtree(cache, ignore_errors=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(tree), TPHYS_KERNEL_CACHE=str(cache), PYTHONDONTWRITEBYTECODE="1")
        cmd = ["nice", "-n", "15", sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
               "--timeout=300", *C_TESTS]
        try:
            rc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=600).returncode
        except subprocess.TimeoutExpired:
            rc = -24
        status = "survived" if rc == 0 else "timeout" if rc == -24 else "killed"
        results.append({k: m[k] for k in ("id", "line", "original", "mutated")} | {"status": status})
        print(f"[c] {m['id']}: {status}", flush=True)
    (tree / C_SOURCE).write_text(text)
    path.write_text(json.dumps({"source": C_SOURCE, "functions": list(C_FUNCTIONS), "tests": C_TESTS,
                                "candidates": len(candidates), "sampled": len(sample), "commit": git_head(source),
                                "mutants": results}, indent=1) + "\n")


# ----------------------------------------------------------------------------- decorated Python functions
# mutmut skips every decorated function (its trampoline cannot wrap them): @torch.no_grad() hides SHAC's target update and
# evaluate(). The same operator-swap mutator as for C covers their lines, each mutant run in a scratch copy.
DECORATED = {  # key -> (file, function, tests)
    "shac_update_target": ("rl/objectives/shac.py", "update_target", ["tests/rl/test_update_rules.py"]),
    "evaluate": ("rl/trainers/evaluation.py", "evaluate", ["tests/rl/test_evaluation_per_episode.py"]),
}
PY_SWAPS = [(" + ", " - "), (" - ", " + "), (" * ", " / "), (" / ", " * "), (" < ", " <= "), (" > ", " >= "), (" >= ", " > "),
            (" <= ", " < "), (" == ", " != "), ("1.0", "2.0"), ("(1)", "(2)"), ("dim=1", "dim=0"), ("True", "False"),
            ("DETERMINISTIC", "RANDOM"), ("RANDOM", "DETERMINISTIC"), ("[:episodes]", "[:episodes - 1]"), (" or ", " and ")]


def decorated_mutants(text: str, function: str) -> list[dict]:
    import ast

    node = next(n for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == function)
    body_start = node.body[1].lineno if isinstance(node.body[0], ast.Expr) and len(node.body) > 1 else node.body[0].lineno
    lines, out = text.splitlines(), []
    for no in range(body_start, node.end_lineno + 1):
        line = lines[no - 1]
        code = line.split("#")[0]
        if not code.strip() or code.strip().startswith(("raise ", '"', "f\"")):
            continue
        for old, new in PY_SWAPS:
            start = code.find(old)
            while start >= 0:
                mutated = line[:start] + new + line[start + len(old):]
                out.append({"id": f"{function}:{no}:{start}:{old.strip()}->{new.strip()}", "line": no, "original": line.strip(),
                            "mutated": mutated.strip(), "text": mutated})
                start = code.find(old, start + 1)
    return out


def run_decorated(source: Path, workdir: Path, deadline: float) -> None:
    for key, (path, function, tests) in DECORATED.items():
        out = RESULTS_DIR / f"decorated_{key}.json"
        old = {m["id"]: m for m in (json.loads(out.read_text())["mutants"] if out.exists() else []) if m.get("status") == "killed"}
        text = (source / path).read_text()
        tree = fresh_tree(source, workdir / "decorated")
        results = []
        for m in decorated_mutants(text, function):
            prior = old.get(m["id"])
            if prior and prior["original"] == m["original"]:
                results.append(prior)
                continue
            if time.time() > deadline:
                results.append(unchecked(m))
                continue
            lines = text.splitlines()
            lines[m["line"] - 1] = m["text"]
            (tree / path).write_text("\n".join(lines) + "\n")
            status = "survived" if pytest_passes(tree, tests) else "killed"
            results.append({k: m[k] for k in ("id", "line", "original", "mutated")} | {"status": status})
            print(f"[{key}] {m['id']}: {status}", flush=True)
        out.write_text(json.dumps({"source": path, "function": function, "tests": tests, "commit": git_head(source),
                                   "mutants": results}, indent=1) + "\n")


def tally(key: str, data: dict, equivalent: dict) -> dict:
    t = {"mutants": 0, "killed": 0, "new_kills": 0, "survived": 0, "equivalent": 0, "not_checked": 0, "survivors": [], "equivalents": []}
    for name, m in data.get("mutants", {}).items():
        t["mutants"] += 1
        eq = equivalent.get(name)
        if eq is not None and eq.get("change") == m.get("change") and m["status"] in ("survived", "not checked"):
            t["equivalent"] += 1
            t["equivalents"].append((name, m, eq["reason"]))
        elif m["status"] in DETECTED:
            t["killed"] += 1
            t["new_kills"] += m.get("first") == "survived"
        elif m["status"] == "not checked":
            t["not_checked"] += 1
        else:
            t["survived"] += 1
            t["survivors"].append((name, m))
    checked = t["killed"] + t["survived"]
    t["score"] = t["killed"] / checked if checked else float("nan")
    return t


def summary_line(key: str, data: dict) -> str:
    t = tally(key, data, load_equivalent())
    return (f"{t['mutants']} mutants: {t['killed']} killed, {t['survived']} survived, {t['equivalent']} equivalent, "
            f"{t['not_checked']} not checked; score {100 * t['score']:.1f} %")


def report() -> str:
    equivalent = load_equivalent()
    lines = [BEGIN, "", "## Mutation score: physics, kernels' twins, returns, losses, update rules, evaluation (issue 22)", "",
             "mutmut 3 mutates each module below (operator swaps, constants, comparisons, dropped arguments, ...); each",
             "mutant runs the module's mapped test files only (of those, the tests mutmut saw reach the mutated function).",
             "Score = killed / (killed + survived); equivalent mutants (no behaviour tells them from the original) are listed",
             "with their reason and not counted. Verdicts per mutant: `benchmarks/mutation/<module>.json`.", "",
             "Rerun / resume (a slow job, never in the default pytest run: one worker, `nice`, OMP_NUM_THREADS=1; verdicts",
             "already in `benchmarks/mutation/*.json` are kept while the mutated function is unchanged, survivors are retested):",
             "", "```bash",
             "python benchmarks/mutation.py --workdir /tmp/tphys-mutation                    # every module below",
             "python benchmarks/mutation.py --modules pods_line_search --minutes 30          # one module, time-boxed",
             "python benchmarks/mutation.py --workdir /tmp/tphys-mutation --modules rigid_dynamics rigid_integrator \\",
             "    particle_springs particle_integrators fem mpm_materials muscles sapo loop_updates first_order evaluation",
             "python benchmarks/mutation.py --c --c-limit 40                                 # C: operator swaps in kernels.c",
             "python benchmarks/mutation.py --known                                          # hand-found survivors: old vs new tests",
             "python benchmarks/mutation.py --report                                         # rewrite this section",
             "```", "",
             ("| module | source | tests | mutants | killed | of which survived an earlier run | survived | equivalent "
              "| not checked | score | commit |"),
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    total = {"mutants": 0, "killed": 0, "new_kills": 0, "survived": 0, "equivalent": 0, "not_checked": 0}
    tallies = {}
    for key, mod in MODULES.items():
        data = load_results(key)
        t = tallies[key] = tally(key, data, equivalent)
        for k in total:
            total[k] += t[k]
        score = "-" if t["killed"] + t["survived"] == 0 else f"{100 * t['score']:.1f} %"
        tests = "<br>".join(f"`{x}`" for x in mod.tests)
        scope = f"`{mod.source}`" + (f"<br>only: {', '.join(f'`{f}`' for f in mod.functions)}" if mod.functions else "")
        lines.append(f"| {key} | {scope} | {tests} | {t['mutants']} | {t['killed']} | {t['new_kills']} | {t['survived']} | "
                     f"{t['equivalent']} | {t['not_checked']} | {score} | {data.get('commit', '-')} |")
    checked = total["killed"] + total["survived"]
    lines.append(f"| **all** | | | {total['mutants']} | {total['killed']} | {total['new_kills']} | {total['survived']} | "
                 f"{total['equivalent']} | "
                 f"{total['not_checked']} | {100 * total['killed'] / max(checked, 1):.1f} % | |")
    lines += ["", "What each module covers (and what its `only:` scope leaves out):", ""]
    lines += [f"- {key}: {mod.note}" for key, mod in MODULES.items() if mod.note]
    cpath = RESULTS_DIR / "c_kernels.json"
    if cpath.exists():
        c = json.loads(cpath.read_text())
        st = [m["status"] for m in c["mutants"]]
        k, sv, nc = sum(x in DETECTED for x in st), st.count("survived"), st.count(None)
        lines += ["", f"C (`{c['source']}`, not reachable by mutmut): our operator-swap mutator (`--c`) on the transfer loops "
                  f"({', '.join(c['functions'])}), an evenly spaced sample of {c['sampled']} of its {c['candidates']} candidate "
                  f"mutants, each rebuilt and run against {', '.join(f'`{t}`' for t in c['tests'])}: {k} killed, {sv} survived, "
                  f"{nc} not checked" + (f", score {100 * k / max(k + sv, 1):.1f} %" if k + sv else "") + f" (commit {c['commit']}).",
                  ""]
        for m in c["mutants"]:
            if m["status"] == "survived":
                lines.append(f"- C survivor `{m['id']}`: `{m['mutated']}`")
        lines.append("")
    else:
        lines += ["", "The C kernels (`tphys/kernels/cpu/kernels.c`) are not mutated (mutmut mutates Python only).", ""]
    for key, (path, function, tests) in DECORATED.items():
        dpath = RESULTS_DIR / f"decorated_{key}.json"
        if dpath.exists():
            dm = json.loads(dpath.read_text())["mutants"]
            st = [m["status"] for m in dm]
            lines += [f"`{path}::{function}` is decorated, so mutmut skips it; our operator-swap mutator (`--decorated`): "
                      f"{len(dm)} mutants, {st.count('killed')} killed, {st.count('survived')} survived, {st.count(None)} not checked, "
                      f"against {', '.join(f'`{t}`' for t in tests)}.", ""]
            lines += [f"- survivor `{m['id']}`: `{m['mutated']}`" for m in dm if m["status"] == "survived"]
            if any(m["status"] == "survived" for m in dm):
                lines.append("")
    lines += ["### Surviving mutants", ""]
    any_surv = False
    for t in tallies.values():
        for name, m in t["survivors"]:
            any_surv = True
            change = m.get("change", "").replace("\n", " / ").replace("|", "\\|")
            lines.append(f"- `{name}` ({m['status']}): `{change}`")
    if not any_surv:
        lines.append("none")
    known = json.loads((RESULTS_DIR / "known.json").read_text()) if (RESULTS_DIR / "known.json").exists() else []
    if known:
        lines += ["", "### Survivors found by hand review (`--known`: applied one at a time, old tests then new tests)", "",
                  "| mutant | file | change | old tests pass (survived) | new tests pass | verdict |", "|---|---|---|---|---|---|"]
        for r in known:
            change = r.get("change", r.get("error", "")).replace("\n", " / ").replace("|", "\\|")
            lines.append(f"| {r['mutant']} | `{r['file']}` | `{change}` | {r.get('old_tests_pass')} | {r.get('new_tests_pass')} | "
                         f"{r.get('verdict', '')} |")
    lines += ["", "### Equivalent mutants (not counted)", ""]
    any_eq = False
    for t in tallies.values():
        for name, m, reason in t["equivalents"]:
            any_eq = True
            change = m.get("change", "").replace("\n", " / ").replace("|", "\\|")
            lines.append(f"- `{name}`: `{change}` — {reason}")
    if not any_eq:
        lines.append("none")
    lines += ["", END]
    return "\n".join(lines)


def write_report() -> None:
    section = report()
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS_MD.write_text(text)
    print(section)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modules", nargs="*", default=None, help=f"subset of {list(MODULES)}")
    ap.add_argument("--source", type=Path, default=ROOT, help="tree to copy (tphys, rl, tests, pyproject.toml); default: this repo")
    ap.add_argument("--workdir", type=Path, default=ROOT / "runs" / "mutation", help="scratch copies (not kept)")
    ap.add_argument("--minutes", type=float, default=float("inf"), help="stop after this long (resumable)")
    ap.add_argument("--report", action="store_true", help="only rewrite the RESULTS.md section from the JSON files")
    ap.add_argument("--list", action="store_true", help="modules, tests and results so far")
    ap.add_argument("--survivors", action="store_true", help="print the surviving mutants' changes")
    ap.add_argument("--c", action="store_true", help="run the C operator-swap mutator on the transfer loops of kernels.c")
    ap.add_argument("--c-limit", type=int, default=40, help="C mutants sampled (evenly spaced over the candidates)")
    ap.add_argument("--decorated", action="store_true", help="operator swaps in the decorated functions mutmut skips")
    ap.add_argument("--known", action="store_true", help="check the hand-found survivors (KNOWN) against old and new tests")
    ap.add_argument("--mark-equivalent", nargs=2, metavar=("MUTANT", "REASON"), action="append",
                    help="record a mutant as equivalent (its current changed line is stored with the reason)")
    args = ap.parse_args()
    if args.mark_equivalent:
        equivalent = load_equivalent()
        for name, reason in args.mark_equivalent:
            key = next((k for k in MODULES if name in load_results(k).get("mutants", {})), None)
            if key is None:
                raise SystemExit(f"no results for mutant {name}")
            equivalent[name] = {"change": load_results(key)["mutants"][name]["change"], "reason": reason}
        EQUIVALENT.write_text(json.dumps(dict(sorted(equivalent.items())), indent=1, ensure_ascii=False) + "\n")
        return
    if args.c:
        run_c(args.source.resolve(), args.workdir.resolve(), args.c_limit, time.time() + 60 * args.minutes)
        return
    if args.decorated:
        run_decorated(args.source.resolve(), args.workdir.resolve(), time.time() + 60 * args.minutes)
        return
    if args.known:
        run_known(args.source.resolve(), args.workdir.resolve())
        return
    if args.survivors:
        equivalent = load_equivalent()
        for key in args.modules or list(MODULES):
            for name, m in tally(key, load_results(key), equivalent)["survivors"]:
                print(f"{name} ({m['status']})\n    " + m.get("change", "").replace("\n", "\n    "))
        return
    if args.list:
        for key, mod in MODULES.items():
            print(f"{key:16s} {mod.source:32s} {summary_line(key, load_results(key))}\n{'':16s} tests: {' '.join(mod.tests)}")
        return
    if not args.report:
        deadline = time.time() + 60 * args.minutes
        for key in args.modules or list(MODULES):
            if key not in MODULES:
                raise SystemExit(f"unknown module {key!r}; one of {list(MODULES)}")
            if time.time() > deadline:
                break
            run_module(key, args.source.resolve(), args.workdir.resolve(), deadline)
        print(report().split("### Surviving")[0].split("|---")[-1])
        return
    write_report()


if __name__ == "__main__":
    main()
