"""Device meshes and the placement of batches, ensemble members and replicated state on them.

One axis, ``"batch"``, over every device JAX sees: trajectories (or ensemble members) are
split along it, parameters and training data are replicated. Nothing here reduces a
gradient by hand: a function jitted over such inputs is partitioned by XLA (GSPMD), which
inserts the all-reduce of a gradient of a batch mean itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

#: The name of the one mesh axis along which batches and ensemble members are split.
AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh (`AXIS`) over ``devices``, by default every device of every process
    (``jax.devices()``): one CPU, the GPUs of a node, or the devices of all hosts after
    `scilayers.distributed.initialize`."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("batch_mesh needs at least one device.")
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def local_mesh() -> Mesh:
    """A one-axis mesh over this process's own devices (``jax.local_devices()``): for work
    every process does in full by itself (truth generation), which never waits on
    another process."""
    return batch_mesh(jax.local_devices())


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """Split the leading axis over the mesh (default `batch_mesh`); other axes whole."""
    return NamedSharding(batch_mesh() if mesh is None else mesh, PartitionSpec(AXIS))


def replicated_sharding(mesh: Mesh | None = None) -> NamedSharding:
    """A full copy on every device of the mesh (default `batch_mesh`)."""
    return NamedSharding(batch_mesh() if mesh is None else mesh, PartitionSpec())


def check_divisible(size: int, mesh: Mesh | None = None, what: str = "batch_size") -> None:
    """Raise `ValueError`, saying what to do, unless ``size`` splits evenly over the
    devices of ``mesh`` (default `batch_mesh`)."""
    n = (batch_mesh() if mesh is None else mesh).size
    if size % n:
        lo, hi = (size // n) * n, -(-size // n) * n
        choices = f"{lo} or {hi}" if lo else f"{hi}"
        raise ValueError(
            f"{what}={size} does not split evenly over the {n} devices of the mesh; use a "
            f"multiple of {n} (e.g. {choices}), or run on a device count that divides it. "
            f"(A training batch is not padded: padded windows would change the loss. "
            f"Rollouts, truth generation and ensemble members are padded automatically, "
            f"see scilayers.distributed.pad_batch.)"
        )


def _leading(tree: PyTree) -> int:
    sizes = {int(jnp.shape(x)[0]) for x in jtu.tree_leaves(tree) if eqx.is_array(x)}
    if len(sizes) != 1:
        raise ValueError(
            f"expected every array to share one leading (batch) axis, got sizes {sorted(sizes)}."
        )
    return sizes.pop()


def pad_batch(tree: PyTree, multiple: int) -> tuple[PyTree, int]:
    """``(padded, n)``: every array of ``tree`` extended along its leading axis, by
    repeating its last entry, to a multiple of ``multiple``; ``n`` is the original length.
    For independent entries (rollouts from many initial states, ensemble members) the
    padded entries are computed and dropped (`unpad`), so results are unchanged."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}.")
    n = _leading(tree)
    extra = -n % multiple
    if not extra:
        return tree, n

    def pad(x):
        if not eqx.is_array(x):
            return x
        return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])

    return jtu.tree_map(pad, tree), n


def unpad(tree: PyTree, n: int) -> PyTree:
    """The first ``n`` entries along the leading axis of every array of ``tree``."""
    return jtu.tree_map(lambda x: x[:n] if eqx.is_array(x) else x, tree)


def _global(x, sharding: NamedSharding):
    """``x`` (the same value on every process) as one array laid out as ``sharding``."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(
            _global(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x)
        )
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)  # every process holds the whole value: each places its shards
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_batch(tree: PyTree, mesh: Mesh | None = None) -> PyTree:
    """Place every array of ``tree`` on ``mesh`` (default `batch_mesh`), split along its
    leading axis (trajectories, windows or ensemble members). Every process passes the
    same full value. The leading axis must divide evenly over the devices (`pad_batch`
    pads it; `check_divisible` says what to do otherwise)."""
    mesh = batch_mesh() if mesh is None else mesh
    check_divisible(_leading(tree), mesh, "the leading (batch) axis")
    sharding = batch_sharding(mesh)
    return jtu.tree_map(lambda x: _global(x, sharding) if eqx.is_array(x) else x, tree)


def replicate(tree: PyTree, mesh: Mesh | None = None) -> PyTree:
    """Place every array of ``tree`` whole on every device of ``mesh`` (default
    `batch_mesh`): parameters, optimiser states and training data. Every process passes
    the same value."""
    sharding = replicated_sharding(mesh)
    return jtu.tree_map(lambda x: _global(x, sharding) if eqx.is_array(x) else x, tree)


def constrain_batch(tree: PyTree, mesh: Mesh) -> PyTree:
    """Inside ``jit``: ask XLA to lay every array of ``tree`` out split along its leading
    axis over ``mesh`` (``with_sharding_constraint``). The rest of the program is
    partitioned from there; reductions over that axis become the compiler's all-reduces."""
    sharding = batch_sharding(mesh)
    return jtu.tree_map(
        lambda x: jax.lax.with_sharding_constraint(x, sharding) if eqx.is_array(x) else x, tree
    )


def _to_numpy(x):
    if not isinstance(x, jax.Array):
        return np.asarray(x)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # a key stays a key
        data = _to_numpy(jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def to_host(tree: PyTree) -> PyTree:
    """Every array of ``tree`` as a NumPy array holding its whole value, on every process:
    a local or replicated array is copied from a device this process holds; an array split
    over several processes is gathered (``process_allgather``, a collective: every process
    must call this at the same point, even those that will not use the result)."""
    return jtu.tree_map(lambda x: _to_numpy(x) if eqx.is_array(x) else x, tree)


def to_local(tree: PyTree) -> PyTree:
    """`to_host`, then back onto this process's default device: a model trained on a mesh
    made an ordinary single-device model again (what every process then evaluates by
    itself)."""
    return jtu.tree_map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x,
                        to_host(tree))  # fmt: skip


@eqx.filter_jit
def _map(fn, args):
    return eqx.filter_vmap(fn)(*args)


def sharded_map(fn: Callable, *args: PyTree, mesh: Mesh | None = None) -> PyTree:
    """``jax.vmap(fn)(*args)`` with the leading axis of ``args`` split over the devices of
    ``mesh`` (default `batch_mesh`), returned whole on every process as NumPy arrays.

    For many independent computations, e.g. truth generation: rollouts from many initial
    states or PRNG keys. The batch is padded to a multiple of the device count (the padded
    entries are computed and dropped), so any batch size works and each entry's result does
    not depend on the device count. ``fn`` is compiled once per function object and input
    shapes: pass a function defined once (a module-level function, or an ``eqx.Module``
    such as a stepper), not a new ``lambda`` per call.

    **Arguments:** `fn`: maps one entry of each of ``args`` to a pytree of arrays;
    `args`: pytrees whose arrays share one leading (batch) axis; `mesh`: where to run (a
    `local_mesh` keeps every process to its own devices).
    """
    mesh = batch_mesh() if mesh is None else mesh
    padded, n = pad_batch(args, mesh.size)
    placed = shard_batch(padded, mesh)
    return unpad(to_host(_map(fn, placed)), n)


def shard_members(members: PyTree, mesh: Mesh | None = None) -> tuple[PyTree, int]:
    """``(sharded, m)``: a stacked ensemble (every array with a leading member axis)
    padded to a multiple of the device count and split over the devices of ``mesh``
    (default `batch_mesh`), and its true member count ``m`` (`unpad` drops the padding).
    A function ``vmap``-ped over members and jitted over these inputs runs each member on
    the device that holds it, with no communication between members."""
    mesh = batch_mesh() if mesh is None else mesh
    padded, m = pad_batch(members, mesh.size)
    return shard_batch(padded, mesh), m


def devices_summary(mesh: Mesh | None = None) -> str:
    """One line: how many processes and devices, of which platform."""
    mesh = batch_mesh() if mesh is None else mesh
    platforms = sorted({d.platform for d in mesh.devices.flat})
    return (
        f"{jax.process_count()} process(es), {mesh.size} device(s) "
        f"({', '.join(platforms)}; {len(jax.local_devices())} local)"
    )

