"""``python -m bnext bench`` (also installed as ``bnext-bench``): bnext against NumPy, PyTorch and a copy.

For every case (op x shape x dtype x layout x threads) it times bnext, the NumPy reference
(`bnext.reference`), PyTorch's CPU kernels when torch is importable, and a copy of an array of x's
size, all in this one process, then prints a table per op:

- ``bnext``: median time of one call as users make it (y/dx allocated by the call).
- ``vs ref`` / ``vs torch``: how many times faster bnext is (their time / bnext's time; they allocate
  their outputs too).
- ``out=``: the same call given a preallocated output: the kernels' time without the page faults of a
  fresh y/dx (a few ms for arrays over glibc's 32 MB mmap threshold, which are mapped anew every call).
  ``GB/s``: the bytes the op must move (x read and y written; backward also reads dy) / that time.
- ``/copy``: the ``out=`` time / the copy's time, where 1.0 is the memory roofline. The copy is
  ``np.copyto`` into a preallocated array; at more than one thread it is the faster of that and the
  same copy cut into slabs on that many Python threads (NumPy itself copies on one thread).

Timing: one warmup call, then the median of ``--repeat`` runs measured with ``time.perf_counter``;
calls shorter than a millisecond are looped within a run. The reference runs on one thread whatever
the thread count, so it is timed once per input and reused across thread counts.
"""

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

import bnext
from bnext._typing import Array
from bnext._bench_cases import (
    DTYPES,
    FULL_SHAPES,
    LAYOUTS,
    OPS,
    QUICK_SHAPES,
    Case,
    format_shape,
    load_torch,
    make_call,
    make_cases,
    make_inputs,
    parse_shape,
    thread_count,
)

OP_TITLES = {
    "train": "train forward (y, mean, invstd; running stats updated)",
    "eval": "eval forward (y from running stats)",
    "backward": "backward (dx, dweight, dbias)",
    "layer_norm": "layer_norm forward over the last axis (y, mean, invstd)",
    "group_norm": "group_norm forward, gcd(C, 32) groups (y, mean, invstd)",
}
MIN_RUN_SECONDS = 1e-3


def measure(function: Callable[[], object], repeat: int, min_run_seconds: float = MIN_RUN_SECONDS) -> float:
    """Median seconds per call of ``function()``: one warmup call, then ``repeat`` timed runs.

    A run loops the call enough times to last ``min_run_seconds`` (timer resolution and loop overhead
    stay negligible for microsecond calls); large calls run once per run. The loop count is set from
    a second, timed call: the first one pays for page faults and waking threads.
    """
    function()
    start = time.perf_counter()
    function()
    single = time.perf_counter() - start
    number = 1
    if single < min_run_seconds:
        number = min(10_000, math.ceil(min_run_seconds / max(single, 1e-7)))
    per_call = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            function()
        per_call.append((time.perf_counter() - start) / number)
    return statistics.median(per_call)


@dataclass
class Result:
    case: Case
    seconds: dict[str, float] = field(default_factory=dict)  # implementation -> median seconds per call

    def ratio(self, numerator: str, denominator: str) -> float | None:
        if numerator not in self.seconds or denominator not in self.seconds:
            return None
        return self.seconds[numerator] / self.seconds[denominator]

    @property
    def gb_per_s(self) -> float:
        return self.case.bytes_moved / self.seconds["bnext-out"] / 1e9

    @property
    def speedup_vs_reference(self) -> float | None:
        return self.ratio("reference", "bnext")

    @property
    def speedup_vs_torch(self) -> float | None:
        return self.ratio("torch", "bnext")

    @property
    def copy_ratio(self) -> float | None:
        return self.ratio("bnext-out", "copy")

    def to_json(self) -> dict[str, Any]:
        case = self.case
        return {
            "op": case.op,
            "shape": list(case.shape),
            "layout": case.layout,
            "dtype": case.dtype,
            "threads": case.threads,
            "bytes_moved": case.bytes_moved,
            "seconds": dict(self.seconds),
            "gb_per_s": self.gb_per_s,
            "speedup_vs_reference": self.speedup_vs_reference,
            "speedup_vs_torch": self.speedup_vs_torch,
            "copy_ratio": self.copy_ratio,
        }


class Progress:
    """One status line on stderr: rewritten in place on a terminal, a line per case otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.stream = total, stream if stream is not None else sys.stderr
        self.in_place = self.stream.isatty()
        self.width = 0
        self.last_index: int | None = None

    def show(self, index: int, text: str) -> None:
        line = f"[{index:>{len(str(self.total))}}/{self.total}] {text}"
        if self.in_place:
            self.stream.write("\r" + line.ljust(self.width))
            self.width = len(line)
        elif index != self.last_index:  # in a log file, one line per case is enough
            self.stream.write(line + "\n")
        self.last_index = index
        self.stream.flush()

    def close(self) -> None:
        if self.in_place and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def run_cases(cases: Sequence[Case], *, repeat: int, with_torch: bool,
              progress: Progress | None = None) -> list[Result]:
    """Time every implementation of every case; return a list of `Result` in the order of ``cases``."""
    with_backward = any(case.op == "backward" for case in cases)
    reference_seconds: dict[tuple[str, object], float] = {}  # (op, data_key) -> seconds: NumPy runs on one thread at any count
    inputs: dict[str, Array] = {}
    inputs_key = None
    results: list[Result] = []
    for index, case in enumerate(cases, 1):
        if case.data_key != inputs_key:
            inputs = {}  # free the previous arrays before building the next ones
            inputs, inputs_key = make_inputs(case, with_backward=with_backward), case.data_key
        result = Result(case)
        impls = ["bnext", "bnext-out", "reference"] + (["torch"] if with_torch else []) + ["copy"]
        if case.threads > 1:
            impls.append("copy-threaded")
        with thread_count(case.threads):
            for impl in impls:
                if progress is not None:
                    progress.show(index, f"{case.op} {case.label}: {impl}")
                if impl == "reference" and (case.op, case.data_key) in reference_seconds:
                    result.seconds[impl] = reference_seconds[case.op, case.data_key]
                    continue
                call = make_call(impl, case, inputs)
                result.seconds[impl] = measure(call, repeat)
                if impl == "reference":
                    reference_seconds[case.op, case.data_key] = result.seconds[impl]
        if "copy-threaded" in result.seconds:
            # The roofline is the best copy available at this thread count.
            result.seconds["copy"] = min(result.seconds["copy"], result.seconds.pop("copy-threaded"))
        results.append(result)
    if progress is not None:
        progress.close()
    return results


def format_seconds(seconds: float) -> str:
    """Three significant digits in the largest unit that keeps the number >= 1: 1.23 ms, 456 us."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= scale or unit == "ns":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable: the last unit always matches")


def geometric_mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return math.exp(sum(math.log(value) for value in present) / len(present)) if present else None


def format_table(op: str, results: Sequence[Result], with_torch: bool) -> str:
    """The table of one op as a string; a last row gives the geometric means of the ratio columns."""
    columns = ["shape", "layout", "dtype", "threads", "bnext", "vs ref"]
    columns += ["vs torch"] if with_torch else []
    columns += ["out=", "GB/s", "/copy"]
    rows = []
    for result in results:
        case = result.case
        row = [format_shape(case.shape), case.layout, case.dtype, str(case.threads),
               format_seconds(result.seconds["bnext"]), f"{result.speedup_vs_reference:.1f}x"]
        if with_torch:
            row.append(f"{result.speedup_vs_torch:.2f}x")
        row += [format_seconds(result.seconds["bnext-out"]), f"{result.gb_per_s:.1f}", f"{result.copy_ratio:.2f}"]
        rows.append(row)
    summary = ["geometric mean", "", "", "", "",
               f"{geometric_mean(r.speedup_vs_reference for r in results):.1f}x"]
    if with_torch:
        summary.append(f"{geometric_mean(r.speedup_vs_torch for r in results):.2f}x")
    summary += ["", "", f"{geometric_mean(r.copy_ratio for r in results):.2f}"]
    widths = [max(len(row[i]) for row in [columns] + rows + [summary]) for i in range(len(columns))]
    left_aligned = {"shape", "layout", "dtype"}

    def render(row: Sequence[str]) -> str:
        cells = [cell.ljust(width) if name in left_aligned else cell.rjust(width)
                 for name, cell, width in zip(columns, row, widths)]
        return "  ".join(cells).rstrip()

    rule = "-" * len(render(columns))
    lines = [OP_TITLES[op], rule, render(columns), rule]
    lines += [render(row) for row in rows]
    lines += [rule, render(summary)]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: Iterable[int]) -> dict[str, Any]:
    torch = load_torch()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "bnext": bnext.__version__,
        "bnext_default_threads": bnext.get_num_threads(),
        "torch_default_threads": torch.get_num_threads() if torch is not None else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "threads_measured": list(threads),
    }


def describe_machine(info: dict[str, Any]) -> str:
    torch = f"torch {info['torch']}" if info["torch"] else "torch not installed"
    lines = [f"bnext {info['bnext']} | numpy {info['numpy']} | {torch} | python {info['python']}",
             f"{info['cpu_model']}, {info['usable_cpus']} usable CPUs | "
             f"threads measured: {', '.join(map(str, info['threads_measured']))}"]
    load = info["load_average_1min"]
    if load is not None and load > 0.5:
        # Multi-threaded kernels wait at barriers for every thread: a busy core skews them most.
        lines.append(f"note: load average {load:.1f} - other processes are running; timings will be noisy")
    return "\n".join(lines)


def write_plot(path: str, results: Sequence[Result], with_torch: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ops = [op for op in OPS if any(r.case.op == op for r in results)]
    figure, axes = plt.subplots(len(ops), 1, figsize=(max(8, 0.45 * len(results) / len(ops) + 3),
                                                       3.2 * len(ops)), squeeze=False)
    series = [("vs NumPy reference", "speedup_vs_reference")]
    series += [("vs torch", "speedup_vs_torch")] if with_torch else []
    for axis, op in zip(axes[:, 0], ops):
        op_results = [r for r in results if r.case.op == op]
        positions = np.arange(len(op_results))
        bar_width = 0.8 / len(series)
        for i, (label, attribute) in enumerate(series):
            axis.bar(positions + (i - (len(series) - 1) / 2) * bar_width,
                     [getattr(r, attribute) for r in op_results], bar_width, label=label)
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}x"))
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_ylabel("bnext speedup (x)")
        axis.set_title(OP_TITLES[op])
        axis.set_xticks(positions)
        axis.set_xticklabels([r.case.label for r in op_results], rotation=60, ha="right", fontsize=7)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _comma_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [value.strip().lower() for value in text.split(",") if value.strip()]
        bad = [value for value in values if value not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"invalid choice {','.join(bad) or text!r} (choose from {', '.join(choices)})")
        return values
    return parse


def _threads_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"invalid thread counts {text!r}: positive integers, e.g. 1,2")
    return sorted(set(values))


def _shapes_list(text: str) -> list[tuple[int, ...]]:
    try:
        return [parse_shape(value) for value in text.split(",") if value.strip()] or [parse_shape(text)]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "bnext-bench",
        description="Time bnext's batch-norm kernels against the NumPy reference, PyTorch (when "
                    "installed) and a plain copy; print a table per op.",
        epilog="Defaults: all of issue 3's shapes, float32 and float64, nchw and nhwc, threads 1 and "
               "all cores. Shapes are logical N x C x spatial; nhwc stores channels last (axis=-1).",
    )
    parser.add_argument("--quick", action="store_true",
                        help=f"a few shapes ({', '.join(map(format_shape, QUICK_SHAPES))}) in float32: "
                             "seconds; explicit options still apply")
    parser.add_argument("--threads", type=_threads_list, metavar="N[,N...]",
                        help="thread counts (default: 1 and bnext's default, all cores)")
    parser.add_argument("--dtype", type=_comma_list(DTYPES), metavar="|".join(DTYPES),
                        help="comma-separated dtypes (default: both; float32 with --quick)")
    parser.add_argument("--layout", type=_comma_list(LAYOUTS), metavar="|".join(LAYOUTS),
                        help="comma-separated layouts (default: both; 2-D shapes have one layout, 'nc')")
    parser.add_argument("--shapes", type=_shapes_list, metavar="SHAPE[,SHAPE...]",
                        help="e.g. 32x64x56x56,256x1024")
    parser.add_argument("--ops", type=_comma_list(OPS), metavar="|".join(OPS),
                        help="comma-separated ops (default: all)")
    parser.add_argument("--repeat", type=_positive_int, default=5, metavar="N",
                        help="timed runs per measurement, the median is reported (default: 5)")
    parser.add_argument("--json", metavar="FILE", help="also write results and machine info as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart of speedups (needs matplotlib)")
    return parser


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What to run: the explicit options, else the --quick choices, else everything."""
    return {
        "ops": args.ops or list(OPS),
        "shapes": args.shapes or list(QUICK_SHAPES if args.quick else FULL_SHAPES),
        "dtypes": args.dtype or (["float32"] if args.quick else list(DTYPES)),
        "layouts": args.layout or list(LAYOUTS),
        "threads": args.threads or sorted({1, bnext.get_num_threads()}),
        "repeat": args.repeat,
    }


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Entry point of ``python -m bnext bench`` and ``bnext-bench``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("error: --plot needs matplotlib, which is not installed "
                  "(pip install matplotlib); nothing was run", file=sys.stderr)
            return 2
    settings = resolve_settings(args)
    ops, shapes, dtypes, layouts, threads = (
        settings[key] for key in ("ops", "shapes", "dtypes", "layouts", "threads"))
    with_torch = load_torch() is not None

    info = machine_info(threads)
    print(describe_machine(info))
    cases = make_cases(ops, shapes, dtypes, layouts, threads)
    results = run_cases(cases, repeat=args.repeat, with_torch=with_torch,
                        progress=Progress(len(cases)))

    note = (f"median of {args.repeat} runs; vs ref / vs torch = how many times faster bnext is; "
            f"out= = bnext given a preallocated output; /copy = out= time / time of a copy into a "
            f"preallocated array")
    print(note + ("" if with_torch else "; torch not installed"))
    for op in ops:
        print()
        print(format_table(op, [r for r in results if r.case.op == op], with_torch))

    if args.json:
        report = {
            "command": " ".join([prog or "bnext-bench"] + list(sys.argv[1:] if argv is None else argv)),
            "machine": info,
            "settings": dict(settings, shapes=[list(shape) for shape in shapes]),
            "results": [result.to_json() for result in results],
        }
        with open(args.json, "w") as stream:
            json.dump(report, stream, indent=2)
            stream.write("\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        write_plot(args.plot, results, with_torch)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
