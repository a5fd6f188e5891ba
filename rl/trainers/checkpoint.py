"""Atomic checkpoints that say what is wrong with them.

``save_checkpoint(state, dir/last.pt)`` writes a temporary file in the same directory, fsyncs it,
gives the current ``last.pt`` the name ``previous.pt`` (a hard link, renamed into place) and renames
the temporary file to ``last.pt``. Each rename is atomic, so at every instant ``last.pt`` is a
complete checkpoint (the old or the new one): a process killed while writing leaves at most a stray
``.last.pt.*.tmp``.

Every checkpoint carries ``FORMAT`` so a foreign file is told apart from a damaged one.
``load_checkpoint`` raises ``CheckpointError`` naming the file, what is wrong and what to do;
``load_latest_checkpoint`` falls back to ``previous.pt`` when ``last.pt`` is unreadable.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

FORMAT = "tphys-checkpoint/1"
PREVIOUS = "previous.pt"


class CheckpointError(RuntimeError):
    """A checkpoint file that is missing, truncated, empty, foreign or unreadable; the message names it."""


def save_checkpoint(state: dict, path: str | Path, keep_previous: bool = True) -> Path:
    """``torch.save(state)`` to ``path`` atomically; the file it replaces becomes ``previous.pt`` beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.exists():  # a second name for the current file, then renamed: last.pt never goes missing
            link = path.parent / f".{PREVIOUS}.tmp"
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
            except OSError:
                shutil.copy2(path, link)
            os.replace(link, path.parent / PREVIOUS)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader (or a resume after a kill) sees the
    old content or the new, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_file(resume: str | Path) -> Path:
    """The checkpoint a ``resume=`` value names: ``<run dir>/checkpoints/last.pt`` for a run directory, else the file."""
    path = Path(resume)
    return path / "checkpoints" / "last.pt" if path.is_dir() else path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint written by ``save_checkpoint``; ``CheckpointError`` (a missing, empty, truncated or
    foreign file) names the file and what to do."""
    path = Path(path)
    previous = path.parent / PREVIOUS
    hint = f"resume from {previous} or start the run afresh" if path.name != PREVIOUS and previous.is_file() else \
        "start the run afresh (there is no previous.pt beside it to fall back to)"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the run died before it was written; {hint}")
    try:
        if not zipfile.is_zipfile(path):  # torch.save writes a zip; anything else would be unpickled as garbage
            raise zipfile.BadZipFile("not a zip archive (torch.save writes one)")
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError, ImportError,
            AttributeError, KeyError, IndexError, TypeError, UnicodeDecodeError, OverflowError, MemoryError) as err:
        raise CheckpointError(f"checkpoint {path} ({size} bytes) is truncated or not a torch checkpoint "
                              f"({type(err).__name__}: {str(err)[:200]}); {hint}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path} is not a tphys training checkpoint (format {found!r}, expected {FORMAT!r}); "
                              "pass the checkpoint a tphys recipe wrote (<run>/checkpoints/last.pt) or its run directory")
    return state


def load_latest_checkpoint(path: str | Path) -> tuple[dict, Path]:
    """``(state, the file it came from)``: ``path``, or ``previous.pt`` beside it (with a warning) when ``path``
    cannot be read. Raises ``CheckpointError`` naming both files when neither can."""
    path = Path(path)
    try:
        return load_checkpoint(path), path
    except CheckpointError as err:
        previous = path.parent / PREVIOUS
        if path.name == PREVIOUS or not previous.is_file():
            raise
        try:
            state = load_checkpoint(previous)
        except CheckpointError as err2:
            raise CheckpointError(f"{err}\n{err2}") from None
        warnings.warn(f"{err}\nfalling back to the previous checkpoint {previous}", stacklevel=2)
        return state, previous


def env_generator_state(env) -> torch.Tensor | None:
    """The state of ``env``'s reset generator (``env.generator``; None for an env without one, or no env)."""
    gen = getattr(env, "generator", None)
    return None if gen is None else gen.get_state()


def restore_env_generator(env, state: torch.Tensor | None) -> None:
    gen = getattr(env, "generator", None)
    if gen is not None and state is not None:
        gen.set_state(state)
