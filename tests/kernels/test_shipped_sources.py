"""Every C source and header of tphys.kernels ships in the package (a header left out of package-data would break
every C build of an installed, non-editable tphys: the kernels would silently fall back to torch), and every build's
hash covers the headers its source includes."""

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tphys.kernels import c_kernels

ROOT = Path(__file__).resolve().parents[2]


def test_package_data_covers_every_file_the_c_builds_read():
    line = re.search(r'^"tphys\.kernels" = (\[[^\]]*\])', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)  # no tomllib on 3.10
    globs = ast.literal_eval(line.group(1))
    files = [p.relative_to(c_kernels.CPU_DIR.parent).as_posix() for p in c_kernels.CPU_DIR.iterdir() if p.is_file()]
    assert any(f.endswith(".h") for f in files)
    missing = [f for f in files if not any(fnmatch(f, g) for g in globs)]
    assert not missing, f"not in pyproject's package-data for tphys.kernels: {missing}"


def test_local_includes_enter_the_hash_and_a_missing_header_is_named(tmp_path):
    source = tmp_path / "unit.c"
    source.write_text('#include "particle_block.h"\nint f(void) { return 0; }\n')
    header = (c_kernels.CPU_DIR / "particle_block.h").read_bytes()
    assert c_kernels.local_includes(source.read_bytes(), tmp_path) == header
    (tmp_path / "particle_block.h").write_text("/* a local copy wins, as in the compiler's search */\n")
    assert c_kernels.local_includes(source.read_bytes(), tmp_path) == b"/* a local copy wins, as in the compiler's search */\n"
    source.write_text('#include "no_such_header.h"\n')
    with pytest.raises(RuntimeError, match="no_such_header.h"):
        c_kernels.local_includes(source.read_bytes(), tmp_path)
