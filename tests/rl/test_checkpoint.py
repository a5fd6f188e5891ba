"""Checkpoints: atomic under a process that dies while writing, the previous one kept, and one message naming the file
for an empty, truncated, random or foreign file; resume falls back to the previous checkpoint."""

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rl.trainers.checkpoint import PREVIOUS, CheckpointError, load_checkpoint, load_latest_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def state(i):
    return {"counters": {"env_steps": i}, "weights": torch.full((64, 64), float(i))}


def test_the_previous_checkpoint_is_kept(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    assert load_checkpoint(path)["counters"]["env_steps"] == 2
    assert load_checkpoint(tmp_path / PREVIOUS)["counters"]["env_steps"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", PREVIOUS]


@pytest.mark.parametrize("content, what", [
    (b"", "is empty (0 bytes)"),
    (random.Random(0).randbytes(4096), "is truncated or not a torch checkpoint"),
    (b"hello", "is truncated or not a torch checkpoint"),
])
def test_a_broken_file_gives_one_message_naming_it_and_what_to_do(tmp_path, content, what):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and what in str(err.value) and "start the run afresh (there is no previous.pt" in str(err.value)
    save_checkpoint(state(1), tmp_path / PREVIOUS)
    with pytest.raises(CheckpointError, match=f"resume from {tmp_path / PREVIOUS} or start the run afresh"):
        load_checkpoint(path)


def test_random_bytes_of_any_kind_give_the_one_message(tmp_path):
    """Unpickling random bytes can raise anything (OverflowError at seeds 43, 86, 184, MemoryError on some): never a
    bare exception from load_checkpoint."""
    path = tmp_path / "last.pt"
    for seed in range(200):
        path.write_bytes(random.Random(seed).randbytes(4096))
        with pytest.raises(CheckpointError, match="is truncated or not a torch checkpoint"):
            load_checkpoint(path)


def test_a_truncated_checkpoint_is_named(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1), path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 100):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="is truncated or not a torch checkpoint"):
            load_checkpoint(path)


def test_a_foreign_torch_file_is_named_as_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"model.pt is not a tphys training checkpoint \(format None"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="format 'Tensor'"):
        load_checkpoint(path)


def test_resume_falls_back_to_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(state(1), path)
    save_checkpoint(state(2), path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.warns(UserWarning, match="falling back to the previous checkpoint"):
        loaded, source = load_latest_checkpoint(path)
    assert source == tmp_path / PREVIOUS and loaded["counters"]["env_steps"] == 1
    (tmp_path / PREVIOUS).write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_latest_checkpoint(path)


KILL_WHILE_WRITING = textwrap.dedent("""
    import os, sys, torch
    from rl.trainers.checkpoint import save_checkpoint

    class DieWhilePickled:
        def __reduce__(self):
            os._exit(9)  # the process dies in the middle of torch.save

    path = sys.argv[1]
    save_checkpoint({"counters": {"env_steps": 1}, "weights": torch.ones(100_000)}, path)
    save_checkpoint({"counters": {"env_steps": 2}, "weights": torch.ones(100_000), "bomb": DieWhilePickled()}, path)
""")


def test_a_process_killed_while_writing_leaves_the_last_complete_checkpoint(tmp_path):
    """Fault injection: the writer dies half way through the second save; last.pt is still the first, whole."""
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, str(path)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert load_checkpoint(path)["counters"]["env_steps"] == 1
    assert torch.equal(load_checkpoint(path)["weights"], torch.ones(100_000))
    leftovers = [p.name for p in path.parent.iterdir() if p.name not in ("last.pt", PREVIOUS)]
    assert all(name.endswith(".tmp") for name in leftovers)  # at most a stray temporary file
    save_checkpoint(state(3), path)  # the next save is not disturbed by it
    assert load_checkpoint(path)["counters"]["env_steps"] == 3


def test_a_partial_metrics_line_from_a_kill_is_dropped_on_resume(tmp_path):
    """A process killed while appending to metrics.jsonl leaves half a line; resume's truncation and the curves skip it."""
    from rl.trainers import RunLogger, read_metrics

    logger = RunLogger(tmp_path, "none")
    for step in (10, 20, 30):
        logger.log(step, x=1.0)
    with logger.path.open("a") as f:
        f.write('{"step": 40, "x": 1.')
    assert [r["step"] for r in read_metrics(logger.path)] == [10, 20, 30]
    logger.truncate_after(20)
    assert [r["step"] for r in read_metrics(logger.path)] == [10, 20]
    assert logger.path.read_text().endswith("\n")


def test_run_files_are_written_atomically(tmp_path, monkeypatch):
    """config.yaml, recipe.json, eval.json go through a temporary file: a failure while writing keeps the old content."""
    from rl.trainers.checkpoint import atomic_write_text

    path = tmp_path / "config.yaml"
    atomic_write_text(path, "old: 1\n")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new: 2\n")
    assert path.read_text() == "old: 1\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
