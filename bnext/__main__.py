"""``python -m bnext SUBCOMMAND``: the one subcommand is ``bench``."""

import sys
from collections.abc import Sequence

USAGE = """\
usage: python -m bnext bench [options]

subcommands:
  bench    time bnext against the NumPy reference, PyTorch and a copy
           (python -m bnext bench --quick for a run of a few seconds;
            python -m bnext bench --help for the options)"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "bench":
        from bnext.bench import main as bench_main

        status: int = bench_main(argv[1:], prog="python -m bnext bench")
        return status
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv:
        print(f"python -m bnext: unknown subcommand {argv[0]!r}", file=sys.stderr)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
