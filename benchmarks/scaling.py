"""Scaling of a training step with the device count (1, 2, 4), each in its own process.

On a CPU the devices are forced host devices (``XLA_FLAGS=--xla_force_host_platform_
device_count``): they share the machine's cores, so the figures show the overhead of the
split as much as its gain. Prints a Markdown table; ``--out FILE`` also writes JSON.

Usage: python benchmarks/scaling.py [--batch 64] [--horizon 20] [--n 64] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scilayers._bench_scale import bench_scaling, scaling_table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per process")
    p.add_argument("--rounds", type=int, default=2, help="passes over the counts")
    p.add_argument("--single-thread", action="store_true",
                   help="one thread per host device (no XLA CPU thread pool within a device)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    res = bench_scaling(tuple(a.devices), a.batch, a.horizon, a.n, a.repeats, a.rounds,
                        a.single_thread)
    print(scaling_table(res))
    if a.out is not None:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
