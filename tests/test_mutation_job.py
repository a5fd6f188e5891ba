"""The mutation job's bookkeeping (benchmarks/mutation.py; the job itself is slow and never runs here): scope by
function, the changed line of a mutant, resumable verdicts, equivalent mutants left out of the score, the report."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def job(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_job", ROOT / "benchmarks" / "mutation.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mutation_job", mod)  # dataclasses look their module up
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(mod, "EQUIVALENT", tmp_path / "equivalent.json")
    monkeypatch.setattr(mod, "RESULTS_MD", tmp_path / "RESULTS.md")
    return mod


def test_every_module_maps_to_existing_test_files(job):
    for key, mod in job.MODULES.items():
        assert (ROOT / mod.source).is_file(), key
        for t in mod.tests:
            assert (ROOT / t.split("::")[0]).is_file(), (key, t)


def test_scope_by_function_and_changed_lines(job):
    assert job.function_of("rl.objectives.trajectory.x_backtracking_line_search__mutmut_12") == "backtracking_line_search"
    assert job.function_of("rl.objectives.shac.xǁSHACLossǁupdate_target__mutmut_3") == "update_target"
    mod = job.Module("rl/objectives/trajectory.py", [], functions=["backtracking_line_search"])
    assert job.in_scope(mod, "rl.objectives.trajectory.x_backtracking_line_search__mutmut_1")
    assert not job.in_scope(mod, "rl.objectives.trajectory.x_play__mutmut_1")
    diff = "--- a.py\n+++ a.py\n@@ -1,3 +1,3 @@\n x = 1\n-    y = a + b\n+    y = a - b\n z = 2\n"
    assert job.changed_lines(diff) == "- y = a + b\n+ y = a - b"


def test_equivalent_mutants_leave_the_score_and_stale_entries_do_not(job):
    data = {"mutants": {
        "m.x_f__mutmut_1": {"status": "killed", "exit_code": 1, "first": "survived", "change": "a"},
        "m.x_f__mutmut_2": {"status": "survived", "exit_code": 0, "first": "survived", "change": "b"},
        "m.x_f__mutmut_3": {"status": "survived", "exit_code": 0, "first": "survived", "change": "c"},
        "m.x_f__mutmut_4": {"status": "not checked", "exit_code": None, "first": None, "change": "d"},
        "m.x_f__mutmut_5": {"status": "timeout", "exit_code": 36, "first": "timeout", "change": "e"},
    }}
    eq = {"m.x_f__mutmut_2": {"change": "b", "reason": "dead store"}, "m.x_f__mutmut_3": {"change": "OLD", "reason": "stale"}}
    t = job.tally("k", data, eq)
    assert (t["mutants"], t["killed"], t["new_kills"], t["survived"], t["equivalent"], t["not_checked"]) == (5, 2, 1, 1, 1, 1)
    assert t["score"] == pytest.approx(2 / 3)
    assert [n for n, _ in t["survivors"]] == ["m.x_f__mutmut_3"]


def test_report_section_is_replaced_in_place(job, tmp_path):
    (tmp_path / "RESULTS.md").write_text("# Results\n\nbefore\n")
    key = next(iter(job.MODULES))
    (tmp_path / f"{key}.json").write_text(json.dumps({"commit": "abc1234", "mutants": {
        "m.x_f__mutmut_1": {"status": "killed", "exit_code": 1, "first": "killed", "change": "- a\n+ b"},
        "m.x_f__mutmut_2": {"status": "survived", "exit_code": 0, "first": "survived", "change": "- c | d\n+ e"}}}))
    job.write_report()
    job.write_report()
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.count(job.BEGIN) == 1 and text.count(job.END) == 1 and text.startswith("# Results\n\nbefore\n")
    assert f"| {key} |" in text and "| 50.0 % |" in text and "`m.x_f__mutmut_2` (survived): `- c \\| d / + e`" in text
