"""Run the scilayers benchmark suite; the same function as `scilayers bench`.

Usage: python benchmarks/run.py [--quick] [--only STAGES] [--out benchmarks/results.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scilayers._bench import STAGES, run_benchmarks


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (said in the table)")
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated stages to run ({', '.join(STAGES)}; 'ks' for the KS speed "
        "stages); default: all",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results.json",
        help="where to write the JSON results (default: benchmarks/results.json); on a CPU "
        "backend the medians are also merged into cpu_reference.json next to it",
    )
    args = parser.parse_args(argv)
    return run_benchmarks(quick=args.quick, out=args.out, only=args.only)


if __name__ == "__main__":
    main()
