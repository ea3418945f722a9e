"""`scilayers.distributed` and the memory policy of training.

A process's device count is fixed by ``XLA_FLAGS=--xla_force_host_platform_device_count``
before JAX starts, so every multi-device check runs in subprocesses
(`_distributed_worker.py`): one process with 4 host devices (sharded vs unsharded
training, ensembles, rollouts, truth generation), and two processes with 2 devices each
joined by ``jax.distributed`` on localhost (training agrees with one process; a process
killed with SIGKILL mid-run, then a restart, resumes from the last checkpoint and ends
where an uninterrupted run ends). The references run here, on one device.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import scilayers as sl
from scilayers import distributed
from scilayers.training._fit import _check_resumable

WORKER = Path(__file__).parent / "_distributed_worker.py"
TIMEOUT = 900  # seconds per subprocess: generous, the machine may be loaded
STEPS = 8  # training steps of the multi-process runs (checkpoints every 2)
_CLUSTER_VARS = (
    "SCILAYERS_COORDINATOR", "SCILAYERS_NUM_PROCESSES", "SCILAYERS_PROCESS_ID",
    "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS",
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
    "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
)  # fmt: skip


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
    # the device count replaces any the parent had; its other XLA flags (the suite's
    # optimisation level, conftest.py) carry over
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags.append(f"--xla_force_host_platform_device_count={devices}")
    env.update(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", **extra)
    if _DATA:
        env["WORKER_DATA"] = _DATA[0]
    return env


_DATA: list[str] = []  # the .npy file of the workers' training data, once made


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(ckpt: Path, out: Path, **extra: str) -> list[subprocess.Popen]:
    """Two processes of one training run (2 host devices each), coordinated on localhost."""
    return _launch(["fit", str(ckpt), str(STEPS), str(out)], **extra)


def _launch(args: list[str], **extra: str) -> list[subprocess.Popen]:
    port = _free_port()
    procs = []
    for pid in range(2):
        env = _env(2, SCILAYERS_COORDINATOR=f"127.0.0.1:{port}", SCILAYERS_NUM_PROCESSES="2",
                   SCILAYERS_PROCESS_ID=str(pid), **extra)  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, str(WORKER), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))  # fmt: skip
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            text = p.communicate(timeout=TIMEOUT)[0]
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, text))
    return out


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The worker module, with its training data made once here and handed to every
    subprocess (`_env`), so that no process compiles the truth again."""
    sys.path.insert(0, str(WORKER.parent))
    try:
        import _distributed_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    path = tmp_path_factory.mktemp("data") / "truth.npy"
    np.save(path, _distributed_worker.truth())
    _DATA[:] = [str(path)]
    yield _distributed_worker
    _DATA.clear()


@pytest.fixture(scope="module")
def reference(worker):
    """The multi-process runs' training on one device, unsharded: their flat parameters."""
    model, data = worker.problem(np.load(_DATA[0]))
    res = sl.fit(model, data, worker.CONFIG.replace(steps=STEPS, checkpoint_every=0),
                 progress=False)  # fmt: skip
    return worker.flat(res.model)


@pytest.fixture(scope="module")
def four_devices(worker, tmp_path_factory):
    """The 4-device checks of `_distributed_worker.checks`, run once."""
    out = tmp_path_factory.mktemp("four") / "checks.json"
    proc = subprocess.run([sys.executable, str(WORKER), "checks", str(out)], env=_env(4),
                          capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


# ----------------------------------------------------------------- 4 devices, one process


def test_sharded_training_matches_unsharded(four_devices):
    """A few steps of `fit` with the batch split over 4 devices give the parameters and
    losses of the unsharded run (to round-off), θ_s having moved; the sharded step holds
    the compiler's all-reduce (no hand-written reduction), the unsharded one none."""
    fit = four_devices["fit"]
    assert four_devices["devices"] == 4 and fit["devices"] == 4
    assert fit["theta_moved"] > 1e-2
    assert fit["max_diff"] < 1e-12
    assert fit["loss_diff"] < 1e-12
    assert fit["all_reduce_sharded"] > 0 and fit["all_reduce_plain"] == 0


def test_indivisible_batch_says_what_to_do(four_devices):
    msg = four_devices["indivisible"]
    assert msg is not None and "batch_size=6" in msg and "multiple of 4" in msg


def test_sharded_ensemble_matches_vmapped(four_devices):
    """6 members over 4 devices (padded to 8, padding dropped) train and roll out exactly
    as the vmapped ensemble on one device; the members differ from each other."""
    ens = four_devices["ensemble"]
    assert ens["members"] == 6
    assert ens["theta_spread"] > 1e-3
    assert ens["max_diff"] < 1e-12 and ens["loss_diff"] < 1e-12
    assert ens["rollout_diff"] < 1e-12


def test_sharded_truth_generation_matches_one_device(four_devices):
    """Rollouts of 7 initial states over 4 devices (`sharded_map`) equal the vmapped
    ones, and `generate_ks` (split over the local devices) gives here, on one device,
    the same truth."""
    gen = four_devices["generation"]
    assert gen["shape"] == [7, 13, 32]
    assert gen["rollout_diff"] < 1e-12
    cfg = sl.data.KSDataConfig(trajectories=6, steps=8, n=32, burn_in=1.0, batch_size=5,
                               ood_fraction=0.0)  # fmt: skip
    here = sl.data.generate_ks(cfg, progress=False)["u"].values
    np.testing.assert_allclose(np.asarray(gen["ks"]), here, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------- two processes (jax.distributed)


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path, reference):
    """Two processes × 2 devices train with the batch split over all 4 devices and end
    with the parameters of one process on one device; only process 0 wrote."""
    out = tmp_path / "result.json"
    done = _finish(_start(tmp_path / "ckpt", out))
    for rc, text in done:
        assert rc == 0, text[-3000:]
    res = json.loads(out.read_text())
    assert res["processes"] == 2 and res["devices"] == 4 and res["mesh_devices"] == 4
    assert res["resumed_from"] is None
    np.testing.assert_allclose(res["params"], reference, rtol=1e-9, atol=1e-12)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "checkpoint.eqx", "checkpoint.json"
    ]


@pytest.mark.slow  # two two-process runs: about a minute on two loaded cores
def test_killed_process_restart_resumes_from_checkpoint(tmp_path, reference):
    """Process 1 is killed (SIGKILL) right after the checkpoint of step 4; process 0 cannot
    go on alone and is ended too, as a scheduler ends a failed job. Restarting both
    resumes from step 4 and ends where the uninterrupted run ends."""
    ckpt, out = tmp_path / "ckpt", tmp_path / "result.json"
    procs = _start(ckpt, out, DIE_AT_CHECKPOINT="4")
    text1 = procs[1].communicate(timeout=TIMEOUT)[0]
    try:
        procs[0].wait(timeout=5)
    except subprocess.TimeoutExpired:
        procs[0].kill()
    text0 = procs[0].communicate()[0]
    assert procs[1].returncode == -signal.SIGKILL, text1[-3000:]
    assert not out.exists(), text0[-2000:]
    assert json.loads((ckpt / "checkpoint.json").read_text())["global_step"] == 4

    for rc, text in _finish(_start(ckpt, out)):
        assert rc == 0, text[-3000:]
    res = json.loads(out.read_text())
    assert res["resumed_from"] == 4
    np.testing.assert_allclose(res["params"], reference, rtol=1e-9, atol=1e-12)


@pytest.mark.slow  # the engine end to end in two processes: several minutes
def test_two_process_study_writes_once_and_resumes_from_its_cache(tmp_path):
    """A study (tiny Burgers) run by two processes through the engine: both get the same
    results, process 0 writes them; rerun with ``--resume``, every process takes every
    finished run from the cache process 0 found (nothing retrained: far quicker) and gets
    the same results again."""
    out = tmp_path / "study"
    for rc, text in _finish(_launch(["study", str(out)])):
        assert rc == 0, text[-3000:]
    first = [json.loads((out / f"process{i}.json").read_text()) for i in range(2)]
    assert first[0]["id_mse"] == first[1]["id_mse"]
    written = json.loads((out / "results.json").read_text())
    assert written["environment"]["process_count"] == 2
    assert {k: v["id_mse"]["mean"] for k, v in written["methods"].items()} == first[0]["id_mse"]
    assert "train_step_peak_mb" in written["methods"]["hybrid_joint"]
    for rc, text in _finish(_launch(["study", str(out), "--resume"])):
        assert rc == 0, text[-3000:]
    again = [json.loads((out / f"process{i}.json").read_text()) for i in range(2)]
    assert again[0]["id_mse"] == again[1]["id_mse"] == first[0]["id_mse"]
    assert again[0]["seconds"] < 0.5 * first[0]["seconds"]


# ------------------------------------------------------------------ start-up, in-process


@pytest.fixture
def clean_env(monkeypatch):
    for k in _CLUSTER_VARS:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_cluster_spec_from_scilayers_and_jax_variables(clean_env):
    assert distributed.cluster_spec() is None
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    clean_env.setenv("JAX_NUM_PROCESSES", "4")
    clean_env.setenv("JAX_PROCESS_ID", "3")
    assert distributed.cluster_spec() == distributed.ClusterSpec("jax-env", "10.0.0.1:1234", 4, 3)
    clean_env.setenv("SCILAYERS_COORDINATOR", "node0:5555")
    clean_env.setenv("SCILAYERS_NUM_PROCESSES", "2")
    clean_env.setenv("SCILAYERS_PROCESS_ID", "1")
    assert distributed.cluster_spec() == distributed.ClusterSpec("env", "node0:5555", 2, 1)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"SCILAYERS_COORDINATOR": "node0:5555"}, "SCILAYERS_NUM_PROCESSES"),
        ({"SCILAYERS_COORDINATOR": "node0", "SCILAYERS_NUM_PROCESSES": "2",
          "SCILAYERS_PROCESS_ID": "0"}, "host:port"),
        ({"SCILAYERS_COORDINATOR": "node0:1", "SCILAYERS_NUM_PROCESSES": "2",
          "SCILAYERS_PROCESS_ID": "2"}, "0..1"),
        ({"SCILAYERS_COORDINATOR": "node0:1", "SCILAYERS_NUM_PROCESSES": "two",
          "SCILAYERS_PROCESS_ID": "0"}, "not an integer"),
    ],
)  # fmt: skip
def test_cluster_spec_refuses_incomplete_variables(clean_env, env, words):
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=words):
        distributed.cluster_spec()


def test_cluster_spec_detects_slurm_with_jax(clean_env):
    """SLURM's variables (read by JAX's own detector) make a multi-process run with
    several tasks; a single task is one process that keeps all its devices."""
    slurm = {"SLURM_JOB_ID": "77", "SLURM_STEP_NODELIST": "node[01-02]", "SLURM_NTASKS": "8",
             "SLURM_PROCID": "5", "SLURM_LOCALID": "1"}  # fmt: skip
    for k, v in slurm.items():
        clean_env.setenv(k, v)
    assert distributed.cluster_spec() == distributed.ClusterSpec("slurm", None, None, None)
    from jax._src.clusters import SlurmCluster  # what jax.distributed.initialize will use

    assert SlurmCluster.get_coordinator_address(None, None).startswith("node01:")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.cluster_spec() is None


def test_cli_distributed_flag_reports_a_bad_environment(clean_env):
    """``scilayers run NAME --distributed`` with an incomplete environment exits with code 2
    and says which variables are missing (before anything starts)."""
    from typer.testing import CliRunner

    from scilayers.cli import app

    clean_env.setenv("SCILAYERS_COORDINATOR", "node0:5555")
    result = CliRunner().invoke(app, ["run", "burgers", "--distributed"])
    assert result.exit_code == 2
    assert "SCILAYERS_NUM_PROCESSES, SCILAYERS_PROCESS_ID not set" in result.output


def test_single_process_helpers():
    """Without `initialize`'s multi-process set-up: process 0 writes, `agree` is the
    identity, a one-device mesh takes any batch, padding round-trips."""
    assert distributed.is_writer()
    assert distributed.agree(True) is True and distributed.agree(False) is False
    mesh = distributed.batch_mesh()
    assert mesh.size == jax.device_count() and mesh.axis_names == (distributed.AXIS,)
    x = {"a": jnp.arange(10.0).reshape(5, 2), "b": jnp.arange(5)}
    padded, n = distributed.pad_batch(x, 4)
    assert n == 5 and padded["a"].shape == (8, 2) and int(padded["b"][-1]) == 4
    assert jax.tree_util.tree_all(
        jax.tree_util.tree_map(lambda p, q: bool(jnp.all(p == q)), distributed.unpad(padded, n), x)
    )
    host = distributed.to_host(distributed.shard_batch(padded))
    assert isinstance(host["a"], np.ndarray) and np.array_equal(host["a"], np.asarray(padded["a"]))


# ---------------------------------------------------------------------- memory policy


def _ks_step(n=64):
    ks = sl.models.KuramotoSivashinsky(length=22.0, n=n, a=sl.Param(0.9), b=sl.Param(1.1))
    return sl.solvers.ETDRK4(ks, dt=0.25)


def test_memory_plan_picks_the_fastest_policy_that_fits():
    step = _ks_step()
    state = jax.ShapeDtypeStruct((64,), jnp.float64)
    est = sl.training.plan_memory(step, state, 100, 8, "auto", 1e9).estimates_mb
    assert est["full"] > 2 * est["checkpoint"] and est["full"] > 2 * est["recursive"]

    def policy(budget, memory="auto"):
        return sl.training.plan_memory(step, state, 100, 8, memory, budget)

    assert policy(None).policy == "full" and policy(None).estimates_mb == {}
    assert policy(1.01 * est["full"]).policy == "full"
    smallest = min(est["checkpoint"], est["recursive"])
    plan = policy(1.01 * est["checkpoint"])
    assert plan.policy == ("checkpoint" if est["checkpoint"] < est["full"] else "recursive")
    assert plan.fits and plan.chosen
    tight = policy(0.5 * smallest)
    assert tight.policy == "recursive" and not tight.fits
    explicit = policy(0.5 * smallest, "full")  # an explicit policy is kept, and checked
    assert explicit.policy == "full" and not explicit.fits and not explicit.chosen


@pytest.mark.slow
def test_fit_follows_the_memory_budget_and_reports_measured_peak():
    """A budget below the `full` estimate makes `fit` unroll with checkpoints: XLA's
    measured peak of the step falls, the parameters after training do not change; an
    explicit `full` is kept, with a note that it exceeds the budget."""
    step = _ks_step()
    truth = sl.models.KuramotoSivashinsky(length=22.0, n=64)
    u0 = jax.vmap(truth.initial_condition)(jax.random.split(jax.random.key(0), 2))
    data = jax.vmap(lambda u: sl.rollout(sl.solvers.ETDRK4(truth, dt=0.25), u, 70))(u0)
    est = sl.training.plan_memory(
        step, jax.ShapeDtypeStruct((64,), data.dtype), 64, 8, "auto", 1e9
    ).estimates_mb
    budget = 0.5 * est["full"]
    cfg = sl.TrainConfig(steps=2, batch_size=8, horizon=64, schedule="constant",
                         memory_budget_mb=budget)  # fmt: skip
    full = sl.fit(step, data, cfg.replace(memory="full"), progress=False)  # explicit: kept
    plan = full.memory["steps"]["joint/64"]["plan"]
    assert plan["policy"] == "full" and not plan["fits"] and full.memory["devices"] == 1
    assert any("over memory_budget_mb" in note for note in full.notes)
    bounded = sl.fit(step, data, cfg, progress=False)
    plan = bounded.memory["steps"]["joint/64"]["plan"]
    assert plan["policy"] in ("checkpoint", "recursive") and plan["fits"] and plan["chosen"]
    assert bounded.peak_memory_mb is not None and full.peak_memory_mb is not None
    assert bounded.peak_memory_mb < 0.7 * full.peak_memory_mb
    assert not any("is estimated at" in note for note in bounded.notes)
    for k in ("theta/a", "theta/b"):
        np.testing.assert_allclose(bounded.history[k], full.history[k], rtol=1e-10)


def test_memory_fields_are_checked_and_free_on_resume():
    with pytest.raises(ValueError, match="unknown memory"):
        sl.TrainConfig(memory="some")
    with pytest.raises(ValueError, match="memory_budget_mb"):
        sl.TrainConfig(memory_budget_mb=0.0)
    saved = sl.TrainConfig(memory="full").to_dict()
    for k in ("memory_budget_mb", "shard"):  # a checkpoint from before these fields
        saved.pop(k)
    _check_resumable(saved, sl.TrainConfig(memory="checkpoint", shard=True), Path("."))
    with pytest.raises(ValueError, match="lr_net"):
        _check_resumable(saved, sl.TrainConfig(lr_net=1.0), Path("."))
