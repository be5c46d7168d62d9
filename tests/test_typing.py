"""`mypy --strict` over the installed bnext package, with its .pyi stubs (runs when mypy is installed)."""

import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

import bnext

pytest.importorskip("mypy", exc_type=ImportError)

# The [tool.mypy] settings of pyproject.toml, repeated so the check also runs against an installed wheel.
MYPY_CONFIG = textwrap.dedent("""
    [mypy]
    python_version = 3.10

    [mypy-torch,torch.*,matplotlib,matplotlib.*]
    ignore_missing_imports = True
    follow_imports = skip
""")


def test_mypy_strict_passes(tmp_path):
    package = os.path.dirname(os.path.abspath(bnext.__file__))
    assert os.path.exists(os.path.join(package, "py.typed"))
    config = tmp_path / "mypy.ini"
    config.write_text(MYPY_CONFIG)
    # An installed wheel is found by name (PEP 561: py.typed); a checkout or an editable install (whose
    # import hook mypy cannot follow) is checked by its path.
    site_dirs = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    installed = os.path.dirname(os.path.realpath(package)) in site_dirs
    target = ["-p", "bnext"] if installed else [package]
    completed = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--config-file", str(config), "--cache-dir",
         str(tmp_path / "cache"), *target],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
