r"""T5X-style training CLI.

  python -m rso_jax.train --gin_file=gin/stages/sft.gin --gin.MODEL_DIR=\"runs/sft\" \
      [--gin_file=...] [--gin.TRAIN_STEPS=500] [--gin_search_paths=dir1,dir2]

Flags as in T5X: `--gin_file` (repeatable), `--gin.PARAM=VALUE` (a gin binding, e.g.
`--gin.TRAIN_STEPS=100` or `--gin.train.learning_rate=3e-4`), `--gin_bindings`,
`--gin_search_paths` (comma separated; the repository's `gin/` folder is always searched),
and `--stage=NAME`: one stage of an experiment (its entry under the gin scope NAME, without the
policy's prerequisites; what the pipeline runs in each stage's process).
Macros used by the gin files (gin/stages/train.gin): MODEL, MODEL_DIR, TRAIN_STEPS, BATCH_SIZE,
MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, RANDOM_SEED, EVAL_PERIOD, INITIAL_CHECKPOINT_PATH,
OPTIMIZER, LEARNING_RATE, MESH_SHAPE; experiments (gin/stages/pipeline.gin) add the stages' own.

The effective gin config is written to `MODEL_DIR/config.gin`; MODEL_DIR is locked while the
run writes it (`MODEL_DIR/.rso_lock`: a second run there is refused, see rso_jax/run_lock.py),
and resuming into a MODEL_DIR whose checkpoint holds another kind or network is refused before
anything in it is written. Errors in the configuration
or the input (unknown binding, a macro no binding reads, missing task, unwritable MODEL_DIR,
indivisible batch size, TRAIN_STEPS < 1, a learning rate that is not finite and > 0) are
reported as one line; set RSO_JAX_TRACEBACK=1 for the full traceback.

Exit status (every rso_jax CLI): 0 done; 2 a user error (one line on stderr, nothing
half-made left behind); 3 a pipeline stage failed (one line naming the stage and its exit
status); 143 preempted (SIGTERM): the checkpoint is saved, rerun the same command to continue.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import gin
import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import cli
from rso_jax import datasets
from rso_jax import errors
from rso_jax import fs
from rso_jax import networks
from rso_jax import partitioning
from rso_jax import run_lock
from rso_jax import runs
from rso_jax import trainer as trainer_lib
from rso_jax.errors import ConfigError


def _initial_params(tr, manifest: checkpoints.Manifest, path: str, print_fn) -> Any:
  """The params a run starts from: INITIAL_CHECKPOINT_PATH's, restored sharded.

  A checkpoint of another kind (a pretrained seq2seq T5 for a Bradley-Terry reward model)
  initializes the parameters the two share by name and shape (the token embedder and the
  encoder); the model's own (the reward head) keep their fresh initialization, the
  checkpoint's extra ones (the decoder) are not read. Which is which is printed.
  """
  found = checkpoints.find_manifest(fs.abspath(path))
  kind = checkpoints.read_manifest(path).kind if found else manifest.kind
  abstract = tr.abstract_params_sharded()
  if kind == manifest.kind or (kind in checkpoints.GENERATIVE_KINDS
                               and manifest.kind in checkpoints.GENERATIVE_KINDS):
    params = checkpoints.load_params(path, abstract)
    print_fn(f"initialized params from {path}")
    return params
  disk = flax.traverse_util.flatten_dict(checkpoints.load_params(path), sep="/")
  fresh = flax.traverse_util.flatten_dict(tr.init_state(None).params, sep="/")
  target = flax.traverse_util.flatten_dict(abstract, sep="/")
  out, taken, kept = {}, [], []
  for name, leaf in fresh.items():
    src = disk.get(name)
    if src is not None and tuple(src.shape) != tuple(leaf.shape):
      raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r}: {name} has shape {src.shape} but "
                        f"the model's is {leaf.shape}")
    if src is None:
      out[name] = leaf
      kept.append(name)
    else:
      out[name] = jax.device_put(np.asarray(src, leaf.dtype), target[name].sharding)
      taken.append(name)
  if not taken:
    raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r} ({kind}) shares no parameter with "
                      f"{manifest.kind} model")
  top = sorted({n.split("/")[0] for n in kept})
  print_fn(f"initialized {len(taken)} of {len(fresh)} params from {path} ({kind}); fresh: "
           f"{', '.join(top) or 'none'}; not read: "
           f"{', '.join(sorted({n.split('/')[0] for n in disk} - {n.split('/')[0] for n in taken})) or 'none'}")
  return flax.traverse_util.unflatten_dict(out, sep="/")


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------
def _model_dir_arg(model_dir: str) -> str:
  if not model_dir:
    raise ConfigError("MODEL_DIR is empty: pass --gin.MODEL_DIR=\\\"path\\\"")
  return fs.abspath(model_dir)


def _prepare_model_dir(model_dir: str) -> str:
  model_dir = _model_dir_arg(model_dir)
  try:
    fs.makedirs(model_dir)
    probe = fs.join(model_dir, f".write_probe_{jax.process_index()}_{os.getpid()}")
    fs.atomic_write_text(probe, "ok")
    fs.remove(probe)
  except OSError as e:  # fs raises the builtin errors on every filesystem
    raise ConfigError(f"MODEL_DIR={model_dir!r} is not writable: {e.strerror or e}") from None
  return model_dir


def _run_resumable(model_dir: str) -> bool:
  """A MODEL_DIR worth keeping after a failure: a saved checkpoint or a finished run (or one
  another run holds the lock of)."""
  return (checkpoints.latest_step(model_dir) is not None
          or runs.is_complete(model_dir) or run_lock.is_locked(model_dir))


# Network config fields a resumed run may change (how it computes, not what it holds).
_RUNTIME_FIELDS = ("dtype", "remat")


def _check_resume(model_dir: str, manifest: checkpoints.Manifest) -> None:
  """Refuses a MODEL_DIR whose checkpoint is of another kind or network than the model (the
  activation dtype and remat aside).

  Read only: called before anything in MODEL_DIR is written (config.gin, the lock, the
  manifest), so a refused run leaves the directory as it was.
  """
  try:
    if not fs.isdir(model_dir) or checkpoints.find_manifest(model_dir) is None:
      return
  except ValueError:  # no manifest found past a damaged step: the trainer reports it
    return
  try:
    stored = checkpoints.read_manifest(model_dir)
  except ValueError as e:  # CheckpointError, a malformed manifest
    raise ConfigError(f"MODEL_DIR={model_dir!r} holds a checkpoint whose manifest cannot be "
                      f"read ({' '.join(str(e).split())[:300]}); nothing was written: use "
                      "another MODEL_DIR") from None
  diff = [f"kind: stored {stored.kind}, configured {manifest.kind}"] * (
      stored.kind != manifest.kind)
  diff += [f"{k}: stored {a}, configured {b}" for k, (a, b) in networks.differences(
      stored.network, manifest.network).items() if k not in _RUNTIME_FIELDS]
  if diff:
    raise ConfigError(f"MODEL_DIR={model_dir!r} holds a checkpoint of another model "
                      f"({'; '.join(diff)}); nothing was written: resume with the stored "
                      "settings or use another MODEL_DIR")


def _run_dirs(stages: Sequence[Any]) -> list:
  """The RUN_DIRs of the pipeline stages a main job runs first (their `run_dir`)."""
  return sorted({fs.abspath(d) for d in (getattr(s, "run_dir", None) for s in stages) if d})


def _check_initial_checkpoint(path: str, manifest: checkpoints.Manifest) -> None:
  """INITIAL_CHECKPOINT_PATH must exist and, when it has a manifest, hold the model's network
  and read the task's vocabulary (else the run would train on ids the checkpoint never saw)."""
  try:
    checkpoints.resolve_params_path(path)
  except FileNotFoundError as e:
    raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r}: {e}") from None
  if checkpoints.find_manifest(fs.abspath(path)) is None:
    return
  init = checkpoints.read_manifest(path)
  if init.network != manifest.network:
    diff = networks.differences(init.network, manifest.network)
    raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r} has another network than the model "
                      f"(checkpoint vs model: {diff}); set the model's size to the "
                      "checkpoint's (e.g. MODEL_CONFIG = @checkpoints.read_config())")
  if init.vocabulary is not None and manifest.task and not checkpoints.same_vocabulary(
      init.get_vocabulary(), datasets.task_vocabulary(manifest.task)):
    raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r} reads vocabulary {init.vocabulary} "
                      f"but task {manifest.task!r} is tokenized with {manifest.vocabulary}")


def _check_train_args(*, train_steps, batch_size, learning_rate, warmup_steps, weight_decay,
                      grad_clip, num_microbatches, eval_period, eval_steps, checkpoint_period,
                      keep_checkpoints, log_period) -> None:
  """Refuses values that cannot run (before anything is built or written)."""
  errors.check_int("TRAIN_STEPS", train_steps)
  errors.check_int("BATCH_SIZE", batch_size)
  errors.check_int("num_microbatches", num_microbatches)
  errors.check_int("warmup_steps", warmup_steps, 0)
  errors.check_int("EVAL_PERIOD", eval_period, 0)
  if eval_period:
    errors.check_int("eval_steps", eval_steps)
  errors.check_int("checkpoint_period", checkpoint_period)
  errors.check_int("keep_checkpoints", keep_checkpoints)
  errors.check_int("log_period", log_period)
  errors.check_number("LEARNING_RATE", learning_rate, strict=True)
  errors.check_number("weight_decay", weight_decay)
  errors.check_number("grad_clip", grad_clip, optional=True)


def _mean_metrics(rows: Sequence[Mapping[str, Any]]) -> dict:
  if not rows:
    return {}
  return {k: float(np.mean([float(np.asarray(r[k])) for r in rows])) for k in rows[0]}


def train(*, model, model_dir: str, train_steps: int, batch_size: int,
          mixture_or_task_name: str, task_feature_lengths: Mapping[str, int],
          optimizer: str = "adafactor", learning_rate: float = 1e-3, warmup_steps: int = 0,
          lr_decay: str = "constant", weight_decay: float = 0.0,
          grad_clip: Optional[float] = 1.0, num_microbatches: int = 1,
          mesh_shape: Sequence[int] = (-1, 1, 1), logical_rules=None, random_seed: int = 0,
          eval_period: int = 0, eval_steps: int = 8, eval_split: str = "validation",
          checkpoint_period: int = 1000, keep_checkpoints: int = 3, log_period: int = 10,
          initial_checkpoint_path: Optional[str] = None, use_cached: bool = False,
          shuffle: bool = True, async_checkpoint: bool = True,
          prerequisites: Sequence[Callable[[], Any]] = (),
          after_training: Sequence[Callable[[str], Any]] = (),
          step_callback: Optional[Callable[[int, dict], None]] = None,
          print_fn: Callable[[str], None] = print) -> dict:
  """Trains `model` on a seqio task; resumes from the latest checkpoint in `model_dir`.

  `prerequisites` run first (e.g. building an SFT checkpoint or a sampled pair task that the
  run depends on); `after_training` callables get `model_dir` when training is done (e.g.
  evaluation). Returns the last train metrics (and `eval/...` if evaluated).

  The arguments, the task, the mesh and the initial checkpoint are checked before MODEL_DIR is
  created (ConfigError), and so is a MODEL_DIR holding a checkpoint of another kind or network
  (refused with nothing in it changed); a MODEL_DIR this call created is removed again if the
  run fails before its first checkpoint. One writer per directory (`run_lock`): MODEL_DIR is
  locked while training, and a main job (prerequisites with a `run_dir`) locks its RUN_DIR. SIGTERM / SIGINT checkpoint at the next step boundary and raise
  `errors.Preempted` (the CLI's exit status 143): rerunning resumes bit for bit.
  """
  model_dir = _model_dir_arg(model_dir)
  _check_train_args(train_steps=train_steps, batch_size=batch_size, learning_rate=learning_rate,
                    warmup_steps=warmup_steps, weight_decay=weight_decay, grad_clip=grad_clip,
                    num_microbatches=num_microbatches, eval_period=eval_period,
                    eval_steps=eval_steps, checkpoint_period=checkpoint_period,
                    keep_checkpoints=keep_checkpoints, log_period=log_period)
  try:
    schedule = trainer_lib.make_schedule(learning_rate, warmup_steps, lr_decay, train_steps)
    opt = trainer_lib.make_optimizer(optimizer, schedule, weight_decay=weight_decay,
                                     grad_clip=grad_clip)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  with contextlib.ExitStack() as stack:
    for run_dir in _run_dirs(prerequisites):  # the main job: one writer per RUN_DIR
      stack.enter_context(runs.removed_on_failure(run_dir, keep=lambda d: bool(fs.listdir(d))))
      stack.enter_context(run_lock.hold(run_dir, "RUN_DIR", print_fn=print_fn))
    for fn in prerequisites:
      fn()
    partitioning.initialize_distributed()
    mesh = partitioning.create_mesh(mesh_shape)
    rules = tuple(logical_rules) if logical_rules else partitioning.LOGICAL_RULES
    try:
      tr = trainer_lib.Trainer(model, opt, mesh, batch_size=batch_size,
                               feature_lengths=task_feature_lengths,
                               num_microbatches=num_microbatches, rules=rules, seed=random_seed,
                               learning_rate_fn=schedule)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    datasets.check_task(mixture_or_task_name)
    manifest = datasets.model_manifest(model, mixture_or_task_name, task_feature_lengths)
    _check_resume(model_dir, manifest)
    if initial_checkpoint_path and checkpoints.latest_step(model_dir) is None:
      fs.check_disjoint(model_dir, {"INITIAL_CHECKPOINT_PATH": initial_checkpoint_path},
                        out_name="MODEL_DIR")
      _check_initial_checkpoint(initial_checkpoint_path, manifest)

    stack.enter_context(runs.removed_on_failure(model_dir, keep=_run_resumable))
    model_dir = _prepare_model_dir(model_dir)
    stack.enter_context(run_lock.hold(model_dir, "MODEL_DIR", print_fn=print_fn,
                                      all_processes=True))
    data = datasets.DatasetConfig(mixture_or_task_name, dict(task_feature_lengths), "train",
                                  batch_size, shuffle, random_seed, use_cached)
    loop = _Loop(data=data, train_steps=train_steps, eval_period=eval_period,
                 eval_steps=eval_steps, eval_split=eval_split,
                 checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
                 log_period=log_period, initial_checkpoint_path=initial_checkpoint_path,
                 async_checkpoint=async_checkpoint, step_callback=step_callback,
                 print_fn=print_fn)
    last = _train_loop(tr, model, manifest, model_dir, mesh, loop)
    for fn in after_training:
      fn(model_dir)
    return last


@dataclasses.dataclass(frozen=True)
class _Loop:
  """What the training loop reads besides the trainer, the model and MODEL_DIR."""
  data: datasets.DatasetConfig
  train_steps: int
  eval_period: int
  eval_steps: int
  eval_split: str
  checkpoint_period: int
  keep_checkpoints: int
  log_period: int
  initial_checkpoint_path: Optional[str]
  async_checkpoint: bool
  step_callback: Optional[Callable[[int, dict], None]]
  print_fn: Callable[[str], None]


def _start(tr, ckpt, manifest, loop: _Loop):
  """(state, batches consumed): the latest intact checkpoint's, else a fresh start (from
  INITIAL_CHECKPOINT_PATH's params when given)."""
  start = ckpt.latest_intact_step(loop.print_fn)
  if start is not None:
    state, meta = ckpt.restore(tr, start)
    batches_done = int(meta.get("batches", start))
    loop.print_fn(f"resumed from {ckpt.directory}/{start} (batches consumed: {batches_done})")
    return state, batches_done
  init_params = None
  if loop.initial_checkpoint_path:
    init_params = _initial_params(tr, manifest, loop.initial_checkpoint_path, loop.print_fn)
  return tr.init_state(init_params), 0


def _evaluate(tr, model, params, logger, loop: _Loop, at_step: int) -> dict:
  """Mean eval metrics over `eval_steps` batches of the eval split (written as `eval/...`)."""
  eval_cfg = dataclasses.replace(loop.data, split=loop.eval_split, shuffle=False)
  rows = []
  for i, b in enumerate(datasets.get_dataset(eval_cfg, model.feature_converter, num_epochs=1)):
    if i >= loop.eval_steps:
      break
    rows.append(jax.device_get(tr.eval_step(params, b)))
  if not rows:
    logging.warning("eval split %r has less than one batch of %d; no eval", loop.eval_split,
                    loop.data.batch_size)
    return {}
  return logger.write(at_step, _mean_metrics(rows), prefix="eval/", progress=False)


def _train_loop(tr, model, manifest, model_dir: str, mesh, loop: _Loop) -> dict:
  """Steps from the start state to `train_steps`; checkpoints, logs, evaluates on the way.
  SIGTERM / SIGINT: a checkpoint at the next step, then `errors.Preempted`."""
  if (gin.config_is_locked() or gin.config_str()) and jax.process_index() == 0:
    fs.atomic_write_text(fs.join(model_dir, "config.gin"), gin.config_str())
  ckpt = trainer_lib.CheckpointManager(model_dir, keep=loop.keep_checkpoints,
                                       async_save=loop.async_checkpoint)
  state, batches_done = _start(tr, ckpt, manifest, loop)
  if jax.process_index() == 0:
    checkpoints.write_manifest(model_dir, manifest)
  step = int(jax.device_get(state.step))
  it = datasets.get_dataset(loop.data, model.feature_converter, skip_batches=batches_done)
  logger = trainer_lib.MetricLogger(model_dir, loop.train_steps, start_step=step,
                                    print_fn=loop.print_fn)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  loop.print_fn(f"training {type(model).__name__} ({n_params:,} params) on "
                f"{loop.data.mixture_or_task_name} for {loop.train_steps} steps, batch "
                f"{loop.data.batch_size}, mesh {dict(mesh.shape)}")
  last: dict = {}
  pending = []
  try:
    with runs.PreemptionFlag() as preempt:
      while step < loop.train_steps:
        try:
          batch = next(it)
        except StopIteration:
          raise ConfigError(f"task {loop.data.mixture_or_task_name!r} ran out of data") from None
        logger.add_tokens(trainer_lib.count_tokens(batch))
        state, metrics = tr.train_step(state, batch)
        step += 1
        batches_done += 1
        pending.append(metrics)
        if step == 1 and hasattr(model, "first_step_note"):  # a fresh run: π_θ is its start
          note = model.first_step_note(jax.device_get(metrics))
          if note:
            loop.print_fn(note)
        if step % loop.log_period == 0 or step == loop.train_steps:
          last = logger.write(step, _mean_metrics(jax.device_get(pending)))
          pending = []
          if loop.step_callback is not None:
            loop.step_callback(step, last)
        if loop.eval_period and (step % loop.eval_period == 0 or step == loop.train_steps):
          last.update(_evaluate(tr, model, state.params, logger, loop, step))
        if preempt.reached(step, ckpt):
          loop.print_fn(f"signal {preempt.signal}: saving a checkpoint at step {step}")
        if (step % loop.checkpoint_period == 0 or step == loop.train_steps
            or preempt.requested):
          ckpt.save(state, {"batches": batches_done}, force=True)
        if preempt.requested:
          break
  except BaseException:
    try:  # let a save in flight finish: it is what a rerun resumes from
      ckpt.close()
    except Exception:  # pylint: disable=broad-except
      pass
    raise
  ckpt.close()
  logger.flush()
  _finish(model_dir, manifest, step, loop.train_steps, preempt)
  return last


def _finish(model_dir: str, manifest, step: int, train_steps: int, preempt) -> None:
  """COMPLETED when every step ran (the manifest beside the final params first); Preempted
  when a signal stopped the run."""
  if step >= train_steps and jax.process_index() == 0:
    checkpoints.write_manifest(checkpoints.resolve_params_path(model_dir), manifest)
    runs.mark_complete(model_dir, f"{step}\n")
  if preempt.requested:
    raise errors.Preempted(
        f"preempted: checkpoint saved at step {step}/{train_steps} in {model_dir}; rerun the "
        "same command to resume")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m rso_jax.train`: the exit status of every rso_jax command (`errors.report`)."""
  return cli.main(argv, train, stage_kwargs={"prerequisites": (), "after_training": ()})


if __name__ == "__main__":
  # Run through the package module so gin files' `from rso_jax import train` is this one.
  from rso_jax import train as _train  # pylint: disable=g-import-not-at-top
  sys.exit(_train.main())
