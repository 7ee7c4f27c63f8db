"""Device mesh, logical-axis rules and sharding helpers (MaxText style).

Mesh axes are `data` (pure data parallelism), `fsdp` (data parallelism with parameters and
optimizer state sharded over it) and `tensor` (model parallelism over heads / mlp / vocab).
A mesh shape entry of -1 is filled with the remaining devices. Logical axis names used by
`network.py` are mapped onto mesh axes by `LOGICAL_RULES`, plain data that gin can override.

The same code runs on 1 CPU device, on 8 simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), on a GPU and on a TPU pod.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rso_jax.errors import MeshError

MESH_AXES: Tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_AXES: Tuple[str, ...] = ("data", "fsdp")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES: Tuple[Tuple[str, Any], ...] = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("relpos_buckets", None),
    ("scalar", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> Tuple[int, ...]:
  """Replaces a single -1 entry by the devices left over; checks the product.

  Raises MeshError naming MESH_SHAPE, its value and `num_devices`.
  """
  try:
    shape = [int(s) for s in mesh_shape]
    if any(s != t for s, t in zip(shape, mesh_shape)):
      raise ValueError
  except (TypeError, ValueError):
    raise MeshError(f"MESH_SHAPE={mesh_shape!r} must be {len(MESH_AXES)} ints for axes "
                    f"{MESH_AXES} ({num_devices} devices)") from None
  value = f"MESH_SHAPE={tuple(shape)}"
  if len(shape) != len(MESH_AXES):
    raise MeshError(f"{value} must have {len(MESH_AXES)} entries for axes {MESH_AXES} "
                    f"({num_devices} devices)")
  if shape.count(-1) > 1:
    raise MeshError(f"{value}: at most one entry may be -1 ({num_devices} devices)")
  for s in shape:
    if s == 0 or s < -1:
      raise MeshError(f"{value}: entries must be positive or -1 ({num_devices} devices)")
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if num_devices % known:
      raise MeshError(f"{value} does not divide the {num_devices} devices (the fixed axes "
                      f"take {known})")
    shape[shape.index(-1)] = num_devices // known
  elif known != num_devices:
    raise MeshError(f"{value} uses {known} devices but {num_devices} are available")
  return tuple(shape)


def create_mesh(mesh_shape: Sequence[int] = (-1, 1, 1),
                devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A `Mesh` over axes (data, fsdp, tensor); `-1` fills with the remaining devices.

  Without `devices`: every device of every process (the multi-host runtime is started first
  when the environment configures one, `initialize_distributed`), so each stage's mesh spans
  the whole job.
  """
  if devices is None:
    initialize_distributed()
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_shape, len(devices))
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # pylint: disable=broad-except  (e.g. CPU devices without topology)
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def _mesh_axis_size(mesh: Mesh, axes: Any) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_spec(logical_axes: Sequence[Optional[str]],
                    rules: Sequence[Tuple[str, Any]] = LOGICAL_RULES,
                    shape: Optional[Sequence[int]] = None,
                    mesh: Optional[Mesh] = None) -> P:
  """PartitionSpec for one array from its logical axis names.

  With `shape` and `mesh` given, a dimension that the mapped mesh axes do not divide is
  replicated instead (logged), so odd sizes (e.g. 6 heads on 8 tensor shards) still run.
  A mesh axis is used at most once per array (first dimension wins).
  """
  rule_map = dict(rules)
  used = set()
  out = []
  for dim, name in enumerate(logical_axes):
    axes = rule_map.get(name) if name is not None else None
    if axes is not None:
      axes_t = (axes,) if isinstance(axes, str) else tuple(axes)
      axes_t = tuple(a for a in axes_t if a not in used
                     and (mesh is None or mesh.shape.get(a, 1) > 1))
      if shape is not None and mesh is not None and axes_t:
        size = _mesh_axis_size(mesh, axes_t)
        if shape[dim] % size:
          logging.info("replicating dim %d (%s, size %d): not divisible by mesh axes %s (%d)",
                       dim, name, shape[dim], axes_t, size)
          axes_t = ()
      used.update(axes_t)
      axes = None if not axes_t else (axes_t[0] if len(axes_t) == 1 else axes_t)
    out.append(axes)
  return P(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh,
                      rules: Sequence[Tuple[str, Any]] = LOGICAL_RULES) -> Any:
  """NamedShardings for a tree of (possibly boxed) abstract variables from `jax.eval_shape`.

  Leaves boxed in `nn.LogicallyPartitioned` are sharded by their names; unboxed leaves
  (e.g. optimizer counters) are replicated.
  """
  def one(leaf):
    if isinstance(leaf, nn.LogicallyPartitioned):
      value = leaf.value
      spec = logical_to_spec(leaf.names, rules, value.shape, mesh)
      return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  return jax.tree.map(one, abstract_tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


class MeshRules:
  """Context: the mesh (for sharding constraints) and the logical-axis rules, entered together."""

  def __init__(self, mesh: Mesh, rules: Sequence[Tuple[str, Any]] = LOGICAL_RULES):
    self.mesh, self.rules = mesh, tuple(rules)

  def __enter__(self):
    self._a = jax.set_mesh(self.mesh)
    self._b = nn.logical_axis_rules(self.rules)
    self._a.__enter__()
    self._b.__enter__()
    return self

  def __exit__(self, *exc):
    self._b.__exit__(*exc)
    self._a.__exit__(*exc)
    return False


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dim split over data+fsdp; the rest replicated."""
  axes = tuple(a for a in BATCH_AXES if mesh.shape[a] > 1)
  lead = None if not axes else (axes[0] if len(axes) == 1 else axes)
  return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
  return _mesh_axis_size(mesh, BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "BATCH_SIZE") -> None:
  dp = data_parallel_size(mesh)
  if batch_size % dp:
    raise ValueError(f"{name}={batch_size} is not divisible by the data-parallel size {dp} "
                     f"(mesh {dict(mesh.shape)})")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """The global NumPy batch -> global jax Arrays sharded along data+fsdp.

  Every process holds the same global batch (`[global_batch, ...]`) and places the rows its
  own devices hold (`jax.make_array_from_callback`), so a run's batches -- and its losses --
  do not depend on how many processes share the mesh.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    sharding = batch_sharding(mesh, max(v.ndim, 1)) if v.ndim else NamedSharding(mesh, P())
    out[k] = jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
  return out


def to_host(tree: Any) -> Any:
  """A tree of (possibly multi-process) global jax Arrays -> NumPy arrays of the global values,
  the same on every process (`device_get` on one process, an all-gather across processes)."""
  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def with_sharding(tree: Any, shardings: Any) -> Any:
  """`jax.device_put` of a tree onto a matching tree of shardings."""
  return jax.tree.map(jax.device_put, tree, shardings)


def initialize_distributed() -> None:
  """Multi-host start-up through JAX's own runtime, when the environment asks for it; idempotent.

  Runs `jax.distributed.initialize()` when a coordinator is configured (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID), or with RSO_JAX_DISTRIBUTED=1 in the TPU pod / SLURM /
  Open MPI environments JAX detects itself. On CPU the processes' collectives go through gloo.
  JAX's preemption service then catches SIGTERM and `runs.PreemptionFlag` synchronizes the
  stop across processes.
  """
  if jax.distributed.is_initialized():
    return
  coordinator = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if not coordinator and os.environ.get("RSO_JAX_DISTRIBUTED") != "1":
    return
  if "cpu" in os.environ.get("JAX_PLATFORMS", "cpu").split(","):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator:
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS={coordinator!r} is set but {missing} are not")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()


def is_multiprocess() -> bool:
  return jax.process_count() > 1


def sync(name: str) -> None:
  """A barrier across processes (no-op on one)."""
  if is_multiprocess():
    multihost_utils.sync_global_devices(name)


def broadcast_from_first(x: Any) -> Any:
  """Process 0's value of a tree of NumPy arrays / scalars, on every process."""
  if not is_multiprocess():
    return x
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(x))
