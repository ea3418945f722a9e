"""Run the scilayers benchmark suite; the same function as `scilayers bench`.

Usage: python benchmarks/run.py [--quick] [--out benchmarks/results.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scilayers._bench import run_benchmarks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (said in the table)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results.json",
        help="where to write the JSON results (default: benchmarks/results.json)",
    )
    args = parser.parse_args(argv)
    return run_benchmarks(quick=args.quick, out=args.out)


if __name__ == "__main__":
    main()
