#!/usr/bin/env bash
# The KS speed benchmark and the KS `quick` study on a GPU, each timed, with the speedup
# over the 2-core CPU reference figures in benchmarks/cpu_reference.json.
#
#   benchmarks/gpu.sh                  on the GPU machine (refuses to run without a GPU)
#   benchmarks/gpu.sh --cpu-reference  on the CPU machine: the same two runs on the CPU; the
#                                      bench merges its medians into cpu_reference.json
#                                      itself, this records the study's wall time there
#   benchmarks/gpu.sh --tiny ...       a dry run at toy sizes (quick bench sizes, gradient
#                                      stage only; the burgers quick study with one seed)
#
# Environment: SCILAYERS (the CLI, default .venv/bin/scilayers, else `scilayers` on PATH),
# PYTHON (default .venv/bin/python, else python3); STUDY, PRESET, SEEDS and BENCH_ONLY
# override what runs (defaults ks, quick, the preset's seeds, ks). A device run is compared
# only with a CPU reference of the same figure sizes and the same study/preset/seeds.
# A GPU run needs a CUDA build of JAX, e.g. `pip install -U "jax[cuda12]"`.
set -euo pipefail

cd "$(dirname "$0")/.."
MODE=device
TINY=0
for arg in "$@"; do
    case "$arg" in
        --cpu-reference) MODE=cpu-reference ;;
        --tiny) TINY=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ -z "${SCILAYERS:-}" ]]; then
    if [[ -x .venv/bin/scilayers ]]; then SCILAYERS=.venv/bin/scilayers; else SCILAYERS=scilayers; fi
fi
STUDY=${STUDY:-ks}
PRESET=${PRESET:-quick}
SEEDS=${SEEDS:-}
BENCH_ONLY=${BENCH_ONLY:-ks}
BENCH_FLAGS=()
if [[ $TINY == 1 ]]; then
    STUDY=${STUDY_TINY:-burgers}
    SEEDS=${SEEDS:-1}
    BENCH_ONLY=grad
    BENCH_FLAGS+=(--quick)
fi

BACKEND=$("$PYTHON" -c "import jax; print(jax.default_backend())")
DEVICES=$("$PYTHON" -c "import jax; print(', '.join(str(d) for d in jax.devices()))")
echo "JAX backend: $BACKEND ($DEVICES)"
if [[ $MODE == device && $BACKEND != gpu && $TINY == 0 ]]; then
    echo "gpu.sh: no GPU visible to JAX (backend '$BACKEND'). Install a CUDA build of JAX" \
         "(pip install -U \"jax[cuda12]\"), or use --cpu-reference on the CPU machine," \
         "or --tiny for a dry run." >&2
    exit 2
fi
if [[ $BENCH_ONLY == *ks* || $BENCH_ONLY == *step* ]] && ! "$PYTHON" -c "import exponax" 2>/dev/null; then
    echo "gpu.sh: the KS step benchmark compares with Exponax; pip install exponax" \
         "(a test dependency of scilayers)." >&2
    exit 2
fi
if [[ $MODE == cpu-reference && $BACKEND != cpu ]]; then
    echo "gpu.sh: --cpu-reference must run on the CPU backend (got '$BACKEND');" \
         "set JAX_PLATFORMS=cpu." >&2
    exit 2
fi

TAG=$BACKEND
[[ $TINY == 1 ]] && TAG="$TAG-tiny"
if [[ $MODE == cpu-reference ]]; then
    # the bench's default output: on the CPU it merges its medians into
    # benchmarks/cpu_reference.json, next to it
    RESULTS=benchmarks/results.json
else
    RESULTS=runs/bench-$TAG/results.json  # (a CPU dry run's own reference lands there too)
fi
OUT=runs/$STUDY-$PRESET-$TAG
SEED_FLAGS=()
[[ -n $SEEDS ]] && SEED_FLAGS=(--seeds "$SEEDS")
STUDY_KEY="$STUDY-$PRESET-seeds${SEEDS:-default}"
TIMES=$(mktemp)
trap 'rm -f "$TIMES"' EXIT

now() { "$PYTHON" -c "import time; print(f'{time.time():.3f}')"; }

echo "== 1/2  scilayers bench --only $BENCH_ONLY ${BENCH_FLAGS[*]:-} --out $RESULTS"
t0=$(now)
"$SCILAYERS" bench --only "$BENCH_ONLY" ${BENCH_FLAGS[@]+"${BENCH_FLAGS[@]}"} --out "$RESULTS"
t1=$(now)
echo "bench_seconds $t0 $t1" >> "$TIMES"

echo "== 2/2  scilayers run $STUDY --preset $PRESET ${SEED_FLAGS[*]:-} --out $OUT (fresh)"
rm -rf "$OUT"  # a fresh run: nothing resumed from an earlier one
t0=$(now)
"$SCILAYERS" run "$STUDY" --preset "$PRESET" ${SEED_FLAGS[@]+"${SEED_FLAGS[@]}"} --out "$OUT" \
    --no-progress
t1=$(now)
echo "study_seconds $t0 $t1" >> "$TIMES"

"$PYTHON" - "$MODE" "$RESULTS" "$TIMES" "$STUDY_KEY" "$BACKEND" "$DEVICES" <<'EOF'
"""Print device vs CPU-reference figures; in --cpu-reference mode record the study time."""
import datetime
import json
import os
import sys
from pathlib import Path

mode, results_path, times_path, study_key, backend, devices = sys.argv[1:]
ref_path = Path("benchmarks/cpu_reference.json")
times = {}
for line in Path(times_path).read_text().splitlines():
    name, t0, t1 = line.split()
    times[name] = float(t1) - float(t0)
results = json.loads(Path(results_path).read_text())
ref = json.loads(ref_path.read_text()) if ref_path.exists() else {}

if mode == "cpu-reference":
    studies = ref.setdefault("studies", {})
    studies[study_key] = {
        "wall_seconds": times["study_seconds"],
        "bench_seconds": times["bench_seconds"],
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": list(os.getloadavg()),
        "devices": devices,
    }
    tmp = ref_path.with_name(f".{ref_path.name}.tmp")
    tmp.write_text(json.dumps(ref, indent=2) + "\n")
    os.replace(tmp, ref_path)
    print(f"recorded the {study_key} study wall time ({times['study_seconds']:.0f} s) "
          f"in {ref_path}")
    sys.exit(0)

figs = ref.get("figures", {})
suffix = "@quick" if results["quick"] else ""
rows = []
for f in results["figures"]:
    r = figs.get(f["key"] + suffix)
    for what, label in (("value", "ours"), ("reference", f["reference_label"])):
        dev = f[what]
        cpu = None if r is None else r.get(what)
        if dev is None:
            continue
        speedup = f"{cpu / dev:.1f}x" if cpu else "no CPU reference"
        cpu_txt = f"{cpu:,.1f}" if cpu else "-"
        rows.append((f"{f['label']} [{label}]", f["unit"], cpu_txt, f"{dev:,.1f}", speedup))
cpu_study = ref.get("studies", {}).get(study_key, {}).get("wall_seconds")
dev_study = times["study_seconds"]
rows.append((f"study {study_key}: wall time", "s", f"{cpu_study:,.0f}" if cpu_study else "-",
             f"{dev_study:,.0f}", f"{cpu_study / dev_study:.1f}x" if cpu_study else
             "no CPU reference (run benchmarks/gpu.sh --cpu-reference on the CPU machine)"))
width = max(len(r[0]) for r in rows)
print(f"\n{backend} ({devices}) vs the CPU reference in {ref_path}")
print(f"{'figure':<{width}}  {'unit':<8} {'CPU':>12} {backend:>12}  speedup")
for name, unit, cpu, dev, speedup in rows:
    print(f"{name:<{width}}  {unit:<8} {cpu:>12} {dev:>12}  {speedup}")
print(f"bench wall time {times['bench_seconds']:.0f} s (compilation included); "
      f"device figures in {results_path}")
EOF
