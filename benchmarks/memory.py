"""Peak memory and time of a long-unroll KS training step per rollout memory policy.

XLA's memory analysis of the compiled step (arguments + outputs + temporaries) for
``full``, ``checkpoint`` and ``recursive``, beside the estimate `fit` chooses a policy by,
and the median step time. Target: <= 1/5 of ``full``'s peak at <= 1.5x its time. Prints a
Markdown table; ``--out FILE`` also writes JSON.

Usage: python benchmarks/memory.py [--n 256] [--batch 64] [--horizon 200] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scilayers._bench_scale import bench_memory_policies, memory_table


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--horizon", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    res = bench_memory_policies(a.n, a.batch, a.horizon, a.repeats)
    print(memory_table(res))
    if a.out is not None:
        a.out.write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
