"""Train state, jitted sharded train/eval steps, orbax checkpoints, metric writers.

The engine for SFT, reward-model and policy training alike: it only needs a model with
`get_initial_variables`, `loss_fn(params, batch, dropout_rng) -> (loss, metrics)` and
`input_shapes`. Parameters and optimizer state are sharded by their logical axes
(`partitioning.LOGICAL_RULES`); the batch along (data, fsdp). One `jax.jit` with explicit
in/out shardings per step; state buffers are donated.

Checkpoints (orbax `CheckpointManager`, `MODEL_DIR/checkpoints/<step>/{params,opt_state,meta}`)
hold everything a bit-for-bit resume needs: params, optimizer state, the step (which fixes the
dropout key, `fold_in(seed, step)`) and the data position (batches consumed).
"""

from __future__ import annotations

import collections
import json
import logging
import time
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rso_jax import checkpoint_files
from rso_jax import checkpoints
from rso_jax import fs
from rso_jax import partitioning
from rso_jax.progress import format_seconds

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array
  params: Any
  opt_state: Any


# --------------------------------------------------------------------------------------------
# Optimizers and schedules
# --------------------------------------------------------------------------------------------
def make_schedule(learning_rate: float, warmup_steps: int = 0, decay: str = "constant",
                  total_steps: Optional[int] = None, end_fraction: float = 0.0) -> optax.Schedule:
  """Linear warm-up then `constant`, `cosine`, `linear` or `rsqrt` (T5's 1/sqrt(step))."""
  if learning_rate <= 0:
    raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
  warm = max(int(warmup_steps), 0)
  if decay == "constant":
    main = optax.constant_schedule(learning_rate)
  elif decay in ("cosine", "linear"):
    if not total_steps:
      raise ValueError(f"decay={decay!r} needs total_steps")
    n = max(int(total_steps) - warm, 1)
    main = (optax.cosine_decay_schedule(learning_rate, n, alpha=end_fraction) if decay == "cosine"
            else optax.linear_schedule(learning_rate, learning_rate * end_fraction, n))
  elif decay == "rsqrt":
    start = max(warm, 1)
    main = lambda s: learning_rate * jnp.sqrt(start / jnp.maximum(s + start, 1.0))
  else:
    raise ValueError(f"unknown decay {decay!r}: use constant, cosine, linear or rsqrt")
  if warm == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(learning_rate / warm, learning_rate, warm), main], [warm])


def make_optimizer(name: str = "adafactor", learning_rate: Any = 1e-3, *,
                   weight_decay: float = 0.0, grad_clip: Optional[float] = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   momentum: Optional[float] = None) -> optax.GradientTransformation:
  """optax optimizer by name: `adafactor` (T5X / paper default), `adamw`, `adam`, `sgd`."""
  if name == "adafactor":
    opt = optax.adafactor(learning_rate, momentum=momentum, multiply_by_parameter_scale=False,
                          weight_decay_rate=weight_decay or None, clipping_threshold=None)
  elif name == "adamw":
    opt = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  elif name == "adam":
    opt = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  elif name == "sgd":
    opt = optax.sgd(learning_rate, momentum=momentum)
  else:
    raise ValueError(f"unknown optimizer {name!r}: use adafactor, adamw, adam or sgd")
  if grad_clip:
    opt = optax.chain(optax.clip_by_global_norm(grad_clip), opt)
  return opt


def unbox(tree: Any) -> Any:
  """Strips `nn.LogicallyPartitioned` boxes without adding sharding constraints."""
  return jax.tree.map(lambda x: x.unbox(apply_constraint=False)
                      if isinstance(x, nn.LogicallyPartitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


# --------------------------------------------------------------------------------------------
# Sharding of the train state
# --------------------------------------------------------------------------------------------
def _path_key(path) -> Tuple[str, ...]:
  out = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        out.append(str(getattr(p, attr)))
        break
  return tuple(out)


def state_shardings(abstract_boxed_params: Any, abstract_opt_state: Any, mesh: Mesh,
                    rules=partitioning.LOGICAL_RULES) -> TrainState:
  """Shardings of a TrainState: params by logical axes; optimizer leaves like their param.

  An optimizer-state leaf whose path ends with a param's path and has the param's shape
  (Adam moments, momentum) is sharded like that param; other leaves (factored Adafactor
  statistics, counters) are replicated: they are vectors or scalars.
  """
  param_shardings = partitioning.logical_shardings(abstract_boxed_params, mesh, rules)
  unboxed = unbox(abstract_boxed_params)
  by_path = {}
  for (path, leaf), (_, shard) in zip(jax.tree_util.tree_flatten_with_path(unboxed)[0],
                                      jax.tree_util.tree_flatten_with_path(param_shardings)[0]):
    by_path[_path_key(path)] = (leaf.shape, shard)
  replicated = NamedSharding(mesh, P())

  def opt_leaf(path, leaf):
    key = _path_key(path)
    for start in range(len(key)):
      hit = by_path.get(key[start:])
      if hit is not None and tuple(hit[0]) == tuple(getattr(leaf, "shape", ())):
        return hit[1]
    return replicated

  opt_shardings = jax.tree_util.tree_map_with_path(opt_leaf, abstract_opt_state)
  return TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
class Trainer:
  """Holds the jitted, sharded train and eval steps of one model on one mesh."""

  def __init__(self, model, optimizer: optax.GradientTransformation, mesh: Mesh, *,
               batch_size: int, feature_lengths: Mapping[str, int], num_microbatches: int = 1,
               rules=partitioning.LOGICAL_RULES, seed: int = 0,
               learning_rate_fn: Optional[Callable] = None):
    partitioning.check_batch_size(batch_size, mesh)
    if num_microbatches < 1 or batch_size % num_microbatches:
      raise ValueError(f"num_microbatches={num_microbatches} must divide BATCH_SIZE={batch_size}")
    if (batch_size // num_microbatches) % partitioning.data_parallel_size(mesh):
      raise ValueError(f"microbatch size {batch_size // num_microbatches} is not divisible by the "
                       f"data-parallel size {partitioning.data_parallel_size(mesh)}")
    self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, rules
    self.batch_size, self.num_microbatches = batch_size, num_microbatches
    self.feature_lengths = dict(feature_lengths)
    self.seed = seed
    self.learning_rate_fn = learning_rate_fn
    self.input_shapes = model.input_shapes(batch_size, feature_lengths)

    init_shapes = model.input_shapes(max(1, partitioning.data_parallel_size(mesh)),
                                     feature_lengths)
    self._init_vars = lambda rng: model.get_initial_variables(rng, init_shapes)["params"]
    with self._ctx():
      self.abstract_boxed = jax.eval_shape(self._init_vars, jax.random.key(0))
      abstract_params = unbox(self.abstract_boxed)
      abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    self.shardings = state_shardings(self.abstract_boxed, abstract_opt, mesh, rules)
    self.abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32),
        params=abstract_params, opt_state=abstract_opt)
    self.batch_shardings = {k: partitioning.batch_sharding(mesh, len(s))
                            for k, s in self.input_shapes.items()}
    replicated = NamedSharding(mesh, P())
    # Frozen reference params (a policy without cached reference log-probs): an explicit,
    # sharded jit argument, never a closure constant and never in the optimizer state.
    self.frozen = getattr(model, "reference_params", None)
    frozen_shardings = None
    if self.frozen is not None:
      frozen_shardings = self.shardings.params
      self.frozen = jax.device_put(self.frozen, frozen_shardings)
    self._train_step = jax.jit(self._train_step_impl,
                               in_shardings=(self.shardings, self.batch_shardings,
                                             frozen_shardings),
                               out_shardings=(self.shardings, replicated),
                               donate_argnums=(0,))
    self._eval_step = jax.jit(self._eval_step_impl,
                              in_shardings=(self.shardings.params, self.batch_shardings,
                                            frozen_shardings),
                              out_shardings=replicated)

  def _ctx(self):
    return partitioning.MeshRules(self.mesh, self.rules)

  # --- state ------------------------------------------------------------------------------
  def init_state(self, params: Any = None) -> TrainState:
    """Fresh state from `seed` (or from given params, e.g. an initial checkpoint), sharded."""
    def init(rng):
      p = unbox(self._init_vars(rng)) if params is None else params
      return TrainState(step=jnp.array(0, jnp.int32), params=p, opt_state=self.optimizer.init(p))

    with self._ctx():
      if params is None:
        return jax.jit(init, out_shardings=self.shardings)(jax.random.key(self.seed))
      # A fresh copy: the train step donates the state, which must not delete the caller's
      # arrays (device_put onto the device they already live on would alias them).
      params = jax.jit(lambda p: jax.tree.map(jnp.copy, p),
                       out_shardings=self.shardings.params)(params)
      init_opt = jax.jit(self.optimizer.init, out_shardings=self.shardings.opt_state)
      return TrainState(step=jax.device_put(jnp.array(0, jnp.int32), self.shardings.step),
                        params=params, opt_state=init_opt(params))

  def abstract_params_sharded(self):
    return checkpoints.abstract_with_shardings(self.abstract_state.params, self.shardings.params)

  # --- steps ------------------------------------------------------------------------------
  def _loss_fn(self, frozen):
    if frozen is None:
      return self.model.loss_fn
    return lambda p, b, r: self.model.loss_fn(p, b, r, reference_params=frozen)

  def _loss_and_grads(self, params, batch, rng, frozen=None):
    grad_fn = jax.value_and_grad(self._loss_fn(frozen), has_aux=True)
    if self.num_microbatches == 1:
      (loss, metrics), grads = grad_fn(params, batch, rng)
      return grads, metrics
    nm = self.num_microbatches
    # [B, ...] -> [num_microbatches, B / num_microbatches, ...]
    mbs = jax.tree.map(lambda x: x.reshape((nm, x.shape[0] // nm) + x.shape[1:]), batch)

    def body(carry, xs):
      g_acc, m_acc = carry
      i, mb = xs
      (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
      return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(jnp.add, m_acc, m)), None

    zeros_g = jax.tree.map(jnp.zeros_like, params)
    m_shape = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda x: x[0], mbs), rng)[0][1])
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
    (g, m), _ = jax.lax.scan(body, (zeros_g, zeros_m), (jnp.arange(nm), mbs))
    return (jax.tree.map(lambda x: x / nm, g), jax.tree.map(lambda x: x / nm, m))

  def _train_step_impl(self, state: TrainState, batch, frozen=None):
    rng = jax.random.fold_in(jax.random.key(self.seed), state.step)
    grads, metrics = self._loss_and_grads(state.params, batch, rng, frozen)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["param_norm"] = optax.global_norm(params)
    if self.learning_rate_fn is not None:
      metrics["learning_rate"] = jnp.asarray(self.learning_rate_fn(state.step), jnp.float32)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step_impl(self, params, batch, frozen=None):
    _, metrics = self._loss_fn(frozen)(params, batch, None)
    return metrics

  def train_step(self, state: TrainState, batch: Mapping[str, np.ndarray]):
    with self._ctx():
      return self._train_step(state, self.shard(batch), self.frozen)

  def eval_step(self, params, batch: Mapping[str, np.ndarray]):
    with self._ctx():
      return self._eval_step(params, self.shard(batch), self.frozen)

  def shard(self, batch: Mapping[str, np.ndarray]) -> Dict[str, Array]:
    missing = set(self.input_shapes) - set(batch)
    if missing:
      raise KeyError(f"batch lacks features {sorted(missing)} (has {sorted(batch)})")
    return partitioning.shard_batch({k: batch[k] for k in self.input_shapes}, self.mesh)


# --------------------------------------------------------------------------------------------
# Checkpoint manager
# --------------------------------------------------------------------------------------------
class CheckpointManager:
  """orbax CheckpointManager over items params / opt_state / meta (JSON).

  Each step lists its files (`checkpoint_files.record_files`) once its items are committed: for an
  asynchronous save from orbax's post-finalization callback, before orbax renames the step into
  place, so no step appears without its list. `latest_intact_step` verifies steps before a
  resume and sets damaged ones aside.
  """

  ITEMS = ("params", "opt_state", "meta")
  DAMAGED_SUBDIR = "damaged_checkpoints"  # where damaged steps are moved, never deleted

  def __init__(self, model_dir: str, keep: int = 3, async_save: bool = True):
    # A URL (gs://...) reaches orbax as it is: fs.abspath leaves URLs alone.
    self.model_dir = fs.abspath(model_dir)
    self.directory = fs.join(self.model_dir, checkpoints.CHECKPOINT_SUBDIR)
    self._async = async_save
    self._saving = collections.deque()  # steps saved whose files are not listed yet
    async_options = (ocp.AsyncOptions(post_finalization_callback=self._record_finalizing)
                     if async_save else None)
    self._mgr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save,
                                             async_options=async_options),
        item_names=self.ITEMS)

  def step_dir(self, step: int) -> str:
    return fs.join(self.directory, str(int(step)))

  def latest_step(self) -> Optional[int]:
    return self._mgr.latest_step()

  def _record_finalizing(self):
    """orbax's post-finalization callback (primary process, items committed, not yet renamed)."""
    if not self._saving:
      return
    step = self._saving.popleft()
    tmp = fs.glob_in(self.directory, f"{step}.orbax-checkpoint-tmp*")
    directory = tmp[-1] if tmp else self.step_dir(step)  # object stores: written in place
    try:
      checkpoint_files.record_files(directory, self.ITEMS)
    except Exception as e:  # pylint: disable=broad-except  (the step stays usable unlisted)
      logging.warning("could not list the files of checkpoint %s: %s", directory, e)

  def save(self, state: TrainState, meta: Mapping[str, Any], force: bool = False) -> bool:
    step = int(jax.device_get(state.step))
    if self._async and jax.process_index() == 0:
      self._saving.append(step)
    try:
      saved = self._mgr.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(state.params),
          opt_state=ocp.args.StandardSave(state.opt_state),
          meta=ocp.args.JsonSave(dict(meta, step=step))), force=force)
    except BaseException:
      if self._saving and self._saving[-1] == step:
        self._saving.pop()
      raise
    if not saved and self._saving and self._saving[-1] == step:
      self._saving.pop()
    if saved and not self._async and jax.process_index() == 0:
      checkpoint_files.record_files(self.step_dir(step), self.ITEMS)
    return saved

  def latest_intact_step(self, report: Callable[[str], None] = print) -> Optional[int]:
    """The newest step that verifies (`checkpoint_files.verify`), or None.

    Each newer, damaged step is moved to `MODEL_DIR/damaged_checkpoints/` (so a resumed run can
    save that step again) and reported in one line naming it, what is wrong and the step resumed
    from.
    """
    damaged = []
    intact = None
    for step in sorted(self._mgr.all_steps(), reverse=True):
      reason = checkpoint_files.verify(self.step_dir(step), self.ITEMS)
      if reason is None:
        intact = step
        break
      damaged.append((step, reason))
    if not damaged:
      return intact
    then = (f"resuming from step {intact} ({self.step_dir(intact)})" if intact is not None
            else "no intact step is left: training starts from step 0")
    for step, reason in damaged:
      dest = self._set_aside(step)
      report(f"checkpoint step {self.step_dir(step)} is damaged ({reason}): moved to {dest}; "
             f"{then}")
    if partitioning.is_multiprocess():
      multihost_utils.sync_global_devices("rso_jax_damaged_checkpoints")
    self._mgr.reload()
    return intact

  def _set_aside(self, step: int) -> str:
    """Moves the damaged `step` into DAMAGED_SUBDIR (a free name); returns where it goes."""
    parent = fs.join(self.model_dir, self.DAMAGED_SUBDIR)
    dest, n = fs.join(parent, str(step)), 0
    while fs.exists(dest):
      n += 1
      dest = fs.join(parent, f"{step}-{n}")
    if jax.process_index() == 0:
      fs.makedirs(parent)
      fs.rename(self.step_dir(step), dest, overwrite=False)
    return dest

  def restore(self, trainer: Trainer, step: Optional[int] = None) -> Tuple[TrainState, dict]:
    step = self._mgr.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        trainer.abstract_state, trainer.shardings)
    try:
      restored = self._mgr.restore(step, args=ocp.args.Composite(
          params=ocp.args.StandardRestore(abstract.params),
          opt_state=ocp.args.StandardRestore(abstract.opt_state),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      damage = checkpoint_files.read_damage(e)
      if damage is None:
        raise
      restored = None
    if restored is None:
      checkpoint_files.drop_pending_reads()
      raise checkpoints.damaged_error(self.step_dir(step), damage)
    meta = dict(restored["meta"])
    state = TrainState(step=jax.device_put(jnp.array(meta["step"], jnp.int32),
                                           trainer.shardings.step),
                       params=restored["params"], opt_state=restored["opt_state"])
    return state, meta

  def reached_preemption(self, step: int) -> bool:
    """orbax's synchronized preemption check (true on every process at the same step)."""
    return self._mgr.reached_preemption(step)

  def wait(self):
    self._mgr.wait_until_finished()

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


# --------------------------------------------------------------------------------------------
# Metrics: TensorBoard (clu), JSONL history and the console progress line
# --------------------------------------------------------------------------------------------
class MetricLogger:
  """Writes scalars to TensorBoard (clu) and `metrics.jsonl`, prints a progress line."""

  def __init__(self, model_dir: str, total_steps: int, start_step: int = 0,
               name: str = "train", print_fn: Callable[[str], None] = print):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
    self.model_dir = model_dir
    self.total_steps = total_steps
    self.print_fn = print_fn
    self.writer = metric_writers.create_default_writer(
        fs.join(model_dir, name), just_logging=jax.process_index() > 0, asynchronous=False)
    self.history_path = fs.join(model_dir, "metrics.jsonl")
    self._truncate_history(start_step)
    self._t0 = time.time()
    self._start_step = start_step
    self._last_t = time.time()
    self._last_step = start_step
    self._tokens = 0.0

  def _truncate_history(self, start_step: int):
    """On resume, drop entries the interrupted run logged after its last checkpoint."""
    if jax.process_index() > 0 or not fs.exists(self.history_path):
      return
    rows = [json.loads(l) for l in fs.read_text(self.history_path).splitlines() if l.strip()]
    keep = [r for r in rows if r.get("step", 0) <= start_step]
    fs.atomic_write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in keep))

  def add_tokens(self, n: float):
    self._tokens += n

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str = "",
            progress: bool = True) -> dict:
    scalars = {f"{prefix}{k}": float(np.asarray(v)) for k, v in metrics.items()}
    now = time.time()
    dt = max(now - self._last_t, 1e-9)
    if progress and step > self._last_step:
      scalars["perf/steps_per_sec"] = (step - self._last_step) / dt
      scalars["perf/tokens_per_sec"] = self._tokens / dt
    self.writer.write_scalars(step, scalars)
    if jax.process_index() == 0:
      with fs.open(self.history_path, "a") as f:
        f.write(json.dumps(dict(scalars, step=step)) + "\n")
    if progress and step > self._last_step:
      done = step - self._start_step
      rate = done / max(now - self._t0, 1e-9)
      eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
      loss = scalars.get(f"{prefix}loss", float("nan"))
      self.print_fn(f"step {step:>6d}/{self.total_steps} | loss {loss:.4f} | "
                    f"{scalars['perf/tokens_per_sec']:,.0f} tok/s | "
                    f"{scalars['perf/steps_per_sec']:.2f} steps/s | ETA {format_seconds(eta)}")
      self._last_t, self._last_step, self._tokens = now, step, 0.0
    return scalars

  def flush(self):
    self.writer.flush()


def count_tokens(batch: Mapping[str, np.ndarray]) -> float:
  return float(sum(np.sum(np.asarray(v) > 0) for k, v in batch.items()
                   if k.endswith("input_tokens")))
