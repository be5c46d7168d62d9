"""Tests of ``python -m bnext bench`` / ``bnext-bench``: options, the printed tables, --json, --plot.

Every run here uses tiny shapes and one timed run so the whole file takes a few seconds.
"""

import json
import subprocess
import sys

import pytest

from bnext import _bench_cases as cases
from bnext import bench
from bnext.__main__ import main as module_main

TINY = ["--shapes", "4x3x2x2,8x5", "--dtype", "float32", "--threads", "1", "--repeat", "1"]
HAS_TORCH = cases.load_torch() is not None


def parse(*argv):
    return bench.resolve_settings(bench.build_parser().parse_args(list(argv)))


def test_defaults_cover_every_shape_dtype_layout_and_op():
    settings = parse()
    assert settings["shapes"] == list(cases.FULL_SHAPES)
    assert settings["dtypes"] == ["float32", "float64"]
    assert settings["layouts"] == ["nchw", "nhwc"]
    assert settings["ops"] == ["train", "eval", "backward", "layer_norm", "group_norm"]
    assert settings["threads"][0] == 1
    assert settings["repeat"] == 5


def test_quick_picks_few_shapes_in_float32_and_explicit_options_win():
    assert parse("--quick")["shapes"] == list(cases.QUICK_SHAPES)
    assert parse("--quick")["dtypes"] == ["float32"]
    assert parse("--quick", "--dtype", "float64")["dtypes"] == ["float64"]
    assert parse("--quick", "--shapes", "2x3")["shapes"] == [(2, 3)]


@pytest.mark.parametrize(
    ("argv", "key", "expected"),
    [
        (["--threads", "2,1,2"], "threads", [1, 2]),
        (["--dtype", "float64,float32"], "dtypes", ["float64", "float32"]),
        (["--layout", "NHWC"], "layouts", ["nhwc"]),
        (["--shapes", "32x64x56x56,256x1024"], "shapes", [(32, 64, 56, 56), (256, 1024)]),
        (["--ops", "backward"], "ops", ["backward"]),
        (["--repeat", "3"], "repeat", 3),
    ],
    ids=["threads", "dtype", "layout", "shapes", "ops", "repeat"],
)
def test_option_parsing(argv, key, expected):
    assert parse(*argv)[key] == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dtype", "float16"], "invalid choice 'float16'"),
        (["--layout", "nwhc"], "invalid choice 'nwhc'"),
        (["--ops", "forward"], "invalid choice 'forward'"),
        (["--threads", "0"], "invalid thread counts"),
        (["--threads", "two"], "invalid thread counts"),
        (["--shapes", "64"], "need at least 2 positive sizes"),
        (["--shapes", "3xa"], "bad shape"),
        (["--repeat", "0"], "must be a positive integer"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
    ids=["dtype", "layout", "ops", "threads-zero", "threads-word", "shape-1d", "shape-word", "repeat", "unknown"],
)
def test_bad_options_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as excinfo:
        bench.main(argv)
    assert excinfo.value.code == 2
    assert message in capsys.readouterr().err


def test_two_dimensional_shapes_have_one_layout():
    made = cases.make_cases(["eval"], [(8, 5), (4, 3, 2, 2)], ["float32"], ["nchw", "nhwc"], [1])
    assert [(case.shape, case.layout) for case in made] == [
        ((8, 5), "nc"), ((4, 3, 2, 2), "nchw"), ((4, 3, 2, 2), "nhwc")]
    assert made[2].memory_shape == (4, 2, 2, 3) and made[2].axis == -1


def test_measure_returns_the_median_per_call():
    calls = []
    seconds = bench.measure(lambda: calls.append(None), repeat=3, min_run_seconds=0.0)
    assert len(calls) == 2 + 3  # a warmup and a calibration call, then one call per run
    assert 0 < seconds < 0.1


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(2.5, "2.5 s"), (0.00123, "1.23 ms"), (0.000456, "456 us"), (4.2e-8, "42 ns"), (0.1234, "123 ms")],
)
def test_format_seconds(seconds, text):
    assert bench.format_seconds(seconds) == text


def test_quick_run_prints_a_table_per_op(capsys):
    assert bench.main(["--quick"] + TINY) == 0
    out, err = capsys.readouterr()
    for title in bench.OP_TITLES.values():
        assert title in out
    header = next(line for line in out.splitlines() if line.startswith("shape"))
    assert header.split() == ["shape", "layout", "dtype", "threads", "bnext", "vs", "ref"] + (
        ["vs", "torch"] if HAS_TORCH else []) + ["out=", "GB/s", "/copy"]
    # 4x3x2x2 in nchw for the 5 ops and nhwc for the 3 batch-norm ops (the siblings are C-ordered only),
    # 8x5 once as "nc" for each of the 5 ops.
    assert out.count("4x3x2x2 ") == 8 and out.count("8x5 ") == 5
    assert out.count("geometric mean") == 5
    assert err.splitlines()[-1].startswith("[13/13] group_norm 8x5-float32-nc-t1")  # the progress lines


def test_json_has_results_and_machine_info(tmp_path, capsys):
    path = tmp_path / "results.json"
    assert bench.main(["--ops", "train,backward", "--json", str(path)] + TINY) == 0
    report = json.loads(path.read_text())
    assert set(report) == {"command", "machine", "settings", "results"}
    machine = report["machine"]
    for key in ("cpu_model", "cpu_count", "numpy", "torch", "bnext", "bnext_default_threads",
                "threads_measured"):
        assert key in machine
    assert (machine["torch"] is not None) == HAS_TORCH
    assert report["settings"]["ops"] == ["train", "backward"]
    assert len(report["results"]) == 2 * 3
    result = report["results"][0]
    assert result["op"] == "train" and result["shape"] == [4, 3, 2, 2] and result["threads"] == 1
    assert set(result["seconds"]) == {"bnext", "bnext-out", "reference", "copy"} | (
        {"torch"} if HAS_TORCH else set())
    assert all(value > 0 for value in result["seconds"].values())
    assert result["bytes_moved"] == 2 * 48 * 4
    assert result["gb_per_s"] > 0 and result["speedup_vs_reference"] > 0 and result["copy_ratio"] > 0


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert bench.main(["--plot", str(tmp_path / "speedups.png")] + TINY) == 2
    out, err = capsys.readouterr()
    assert "--plot needs matplotlib" in err and out == ""
    assert not (tmp_path / "speedups.png").exists()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "speedups.png"
    assert bench.main(["--ops", "eval", "--plot", str(path)] + TINY) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv", [[], ["frobnicate"]], ids=["no-subcommand", "unknown-subcommand"])
def test_module_without_a_known_subcommand_prints_usage_and_exits_2(argv, capsys):
    assert module_main(argv) == 2
    assert "usage: python -m bnext bench" in capsys.readouterr().err


def test_python_dash_m_bnext_bench_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "bnext", "bench", "--ops", "eval", "--layout", "nhwc"] + TINY,
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert bench.OP_TITLES["eval"] in completed.stdout and "4x3x2x2" in completed.stdout
    assert "[2/2]" in completed.stderr
