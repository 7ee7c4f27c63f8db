r"""T5X-style training CLI.

  python -m rso_jax.train --gin_file=gin/sft.gin --gin.MODEL_DIR=\"runs/sft\" \
      [--gin_file=...] [--gin.TRAIN_STEPS=500] [--gin_search_paths=dir1,dir2]

Flags as in T5X: `--gin_file` (repeatable), `--gin.PARAM=VALUE` (a gin binding, e.g.
`--gin.TRAIN_STEPS=100` or `--gin.train.learning_rate=3e-4`), `--gin_bindings`,
`--gin_search_paths` (comma separated; the repository's `gin/` folder is always searched),
and `--stage=NAME`: one stage of an experiment (its entry under the gin scope NAME, without the
policy's prerequisites; what the pipeline runs in each stage's process).
Macros used by the gin files (gin/train.gin): MODEL, MODEL_DIR, TRAIN_STEPS, BATCH_SIZE,
MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, RANDOM_SEED, EVAL_PERIOD, INITIAL_CHECKPOINT_PATH,
OPTIMIZER, LEARNING_RATE, MESH_SHAPE; experiments (gin/pipeline.gin) add the stages' own.

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
import math
import os
import sys
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import gin
import jax
import numpy as np

from rso_jax import checkpoints
from rso_jax import fs
from rso_jax import partitioning
from rso_jax import pipeline
from rso_jax import run_lock
from rso_jax import trainer as trainer_lib

# The command-line machinery lives in cli.py; these names stay importable from here.
from rso_jax.cli import ConfigError  # pylint: disable=g-bad-import-order
from rso_jax.cli import cli_main, configure_gin, parse_flags, removed_on_failure


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which seqio task/mixture to read and how (T5X's `utils.DatasetConfig`, trimmed)."""
  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str = "train"
  batch_size: int = 32
  shuffle: bool = True
  seed: Optional[int] = 0
  use_cached: bool = False


def _check_task(name: str) -> None:
  import seqio  # pylint: disable=g-import-not-at-top
  import rso_jax.tasks  # pylint: disable=g-import-not-at-top,unused-import
  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    known = sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
    raise ConfigError(f"MIXTURE_OR_TASK_NAME={name!r} is not a registered seqio task or mixture "
                      f"(registered: {', '.join(known) or 'none'})")


def get_dataset(cfg: DatasetConfig, feature_converter, *, num_epochs: Optional[int] = None,
                skip_batches: int = 0):
  """An iterator of global NumPy batches `{feature: [batch, ...]}`, the same on every process.

  Every process reads the task's one stream (one shuffle seed) and `Trainer.shard` places the
  rows its devices hold: the batches, and so the run, are the same on any number of hosts,
  and a run resumed on another number of hosts continues the same stream. `skip_batches`
  fast-forwards the deterministic pipeline to where a resumed run left off.
  """
  import seqio  # pylint: disable=g-import-not-at-top
  _check_task(cfg.mixture_or_task_name)
  ds = seqio.get_dataset(
      cfg.mixture_or_task_name, task_feature_lengths=dict(cfg.task_feature_lengths),
      feature_converter=feature_converter, dataset_split=cfg.split, use_cached=cfg.use_cached,
      shuffle=cfg.shuffle, num_epochs=num_epochs, seed=cfg.seed, verbose=False)
  ds = ds.batch(cfg.batch_size, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  return ds.prefetch(2).as_numpy_iterator()


def task_vocabulary(mixture_or_task_name: str):
  """The vocabulary of a task's model inputs (the "inputs" feature, else the first one)."""
  import seqio  # pylint: disable=g-import-not-at-top
  _check_task(mixture_or_task_name)
  feats = seqio.get_mixture_or_task(mixture_or_task_name).output_features
  return (feats.get("inputs") or next(iter(feats.values()))).vocabulary


def model_manifest(model, mixture_or_task_name: str, task_feature_lengths: Mapping[str, int]
                   ) -> checkpoints.Manifest:
  """What a checkpoint of `model` trained on the task is (`checkpoints.Manifest`).

  A model that tokenizes on its own (reward models: separator, "A"/"B") must use the task's
  vocabulary; a mismatch is a ConfigError rather than a reward model that reads other tokens.
  """
  vocab = task_vocabulary(mixture_or_task_name)
  spec = checkpoints.vocabulary_spec(vocab)
  own = getattr(model, "vocabulary", None)
  if own is not None and not checkpoints.same_vocabulary(own, vocab):
    raise ConfigError(f"{type(model).__name__} tokenizes with {checkpoints.vocabulary_spec(own)}"
                      f" but task {mixture_or_task_name!r} uses {spec}: pass the task's "
                      "vocabulary to the model")
  return checkpoints.Manifest(
      kind=model.manifest_kind, network=model.config, vocabulary=spec,
      feature_lengths={k: int(v) for k, v in task_feature_lengths.items()},
      model_settings=model.manifest_settings(), task=mixture_or_task_name)


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
          or fs.exists(fs.join(model_dir, pipeline.COMPLETED)) or run_lock.is_locked(model_dir))


def _network_diff(stored, configured) -> dict:
  """{field: (stored, configured)} of the T5Config fields in which two networks differ."""
  return {f.name: (getattr(stored, f.name), getattr(configured, f.name))
          for f in dataclasses.fields(configured)
          if getattr(stored, f.name) != getattr(configured, f.name)}


# T5Config fields a resumed run may change (how it computes, not what it holds).
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
  diff += [f"{k}: stored {a}, configured {b}" for k, (a, b) in _network_diff(
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
    diff = _network_diff(init.network, manifest.network)
    raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r} has another network than the model "
                      f"(checkpoint vs model: {diff}); set the model's size to the "
                      "checkpoint's (e.g. MODEL_CONFIG = @checkpoints.read_config())")
  if init.vocabulary is not None and manifest.task and not checkpoints.same_vocabulary(
      init.get_vocabulary(), task_vocabulary(manifest.task)):
    raise ConfigError(f"INITIAL_CHECKPOINT_PATH={path!r} reads vocabulary {init.vocabulary} "
                      f"but task {manifest.task!r} is tokenized with {manifest.vocabulary}")


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_train_args(*, train_steps, batch_size, learning_rate, warmup_steps, weight_decay,
                      grad_clip, num_microbatches, eval_period, eval_steps, checkpoint_period,
                      keep_checkpoints, log_period) -> None:
  """Refuses values that cannot run (before anything is built or written)."""
  def positive_int(name, v, minimum=1):
    if not _is_int(v) or v < minimum:
      raise ConfigError(f"{name}={v!r} must be an int >= {minimum}")
  positive_int("TRAIN_STEPS", train_steps)
  positive_int("BATCH_SIZE", batch_size)
  positive_int("num_microbatches", num_microbatches)
  positive_int("warmup_steps", warmup_steps, 0)
  positive_int("EVAL_PERIOD", eval_period, 0)
  if eval_period:
    positive_int("eval_steps", eval_steps)
  positive_int("checkpoint_period", checkpoint_period)
  positive_int("keep_checkpoints", keep_checkpoints)
  positive_int("log_period", log_period)
  try:
    lr = float(learning_rate)
  except (TypeError, ValueError):
    lr = float("nan")
  if not (math.isfinite(lr) and lr > 0):
    raise ConfigError(f"LEARNING_RATE={learning_rate!r} must be a finite number > 0")
  for name, v in (("weight_decay", weight_decay), ("grad_clip", grad_clip)):
    if v is None and name == "grad_clip":
      continue
    try:
      ok = math.isfinite(float(v)) and float(v) >= 0
    except (TypeError, ValueError):
      ok = False
    if not ok:
      raise ConfigError(f"{name}={v!r} must be a finite number >= 0")


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
  `trainer.Preempted` (the CLI's exit status 143): rerunning resumes bit for bit.
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
      stack.enter_context(removed_on_failure(run_dir, keep=lambda d: bool(fs.listdir(d))))
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
    _check_task(mixture_or_task_name)
    manifest = model_manifest(model, mixture_or_task_name, task_feature_lengths)
    _check_resume(model_dir, manifest)
    if initial_checkpoint_path and checkpoints.latest_step(model_dir) is None:
      fs.check_disjoint(model_dir, {"INITIAL_CHECKPOINT_PATH": initial_checkpoint_path},
                        out_name="MODEL_DIR")
      _check_initial_checkpoint(initial_checkpoint_path, manifest)

    stack.enter_context(removed_on_failure(model_dir, keep=_run_resumable))
    model_dir = _prepare_model_dir(model_dir)
    stack.enter_context(run_lock.hold(model_dir, "MODEL_DIR", print_fn=print_fn,
                                      all_processes=True))
    return _train_loop(
        tr, model, manifest, model_dir, train_steps=train_steps,
        batch_size=batch_size, mixture_or_task_name=mixture_or_task_name,
        task_feature_lengths=task_feature_lengths, mesh=mesh, random_seed=random_seed,
        eval_period=eval_period, eval_steps=eval_steps, eval_split=eval_split,
        checkpoint_period=checkpoint_period, keep_checkpoints=keep_checkpoints,
        log_period=log_period, initial_checkpoint_path=initial_checkpoint_path,
        use_cached=use_cached, shuffle=shuffle, async_checkpoint=async_checkpoint,
        after_training=after_training, step_callback=step_callback, print_fn=print_fn)


def _train_loop(tr, model, manifest, model_dir: str, *, train_steps, batch_size,
                mixture_or_task_name, task_feature_lengths, mesh, random_seed, eval_period,
                eval_steps, eval_split, checkpoint_period, keep_checkpoints, log_period,
                initial_checkpoint_path, use_cached, shuffle, async_checkpoint, after_training,
                step_callback, print_fn) -> dict:
  if (gin.config_is_locked() or gin.config_str()) and jax.process_index() == 0:
    fs.atomic_write_text(fs.join(model_dir, "config.gin"), gin.config_str())
  ckpt = trainer_lib.CheckpointManager(model_dir, keep=keep_checkpoints,
                                       async_save=async_checkpoint)
  start = ckpt.latest_intact_step(print_fn)
  if start is not None:
    state, meta = ckpt.restore(tr, start)
    batches_done = int(meta.get("batches", start))
    print_fn(f"resumed from {ckpt.directory}/{start} (batches consumed: {batches_done})")
  else:
    init_params = None
    if initial_checkpoint_path:
      init_params = _initial_params(tr, manifest, initial_checkpoint_path, print_fn)
    state = tr.init_state(init_params)
    batches_done = 0
  if jax.process_index() == 0:
    checkpoints.write_manifest(model_dir, manifest)
  step = int(jax.device_get(state.step))

  data_cfg = DatasetConfig(mixture_or_task_name, dict(task_feature_lengths), "train",
                           batch_size, shuffle, random_seed, use_cached)
  it = get_dataset(data_cfg, model.feature_converter, skip_batches=batches_done)
  logger = trainer_lib.MetricLogger(model_dir, train_steps, start_step=step, print_fn=print_fn)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
  print_fn(f"training {type(model).__name__} ({n_params:,} params) on {mixture_or_task_name} "
           f"for {train_steps} steps, batch {batch_size}, mesh {dict(mesh.shape)}")

  def run_eval(at_step: int) -> dict:
    eval_cfg = dataclasses.replace(data_cfg, split=eval_split, shuffle=False)
    rows = []
    for i, b in enumerate(get_dataset(eval_cfg, model.feature_converter, num_epochs=1)):
      if i >= eval_steps:
        break
      rows.append(jax.device_get(tr.eval_step(state.params, b)))
    if not rows:
      logging.warning("eval split %r has less than one batch of %d; no eval", eval_split,
                      batch_size)
      return {}
    return logger.write(at_step, _mean_metrics(rows), prefix="eval/", progress=False)

  last: dict = {}
  pending = []
  try:
    with trainer_lib.PreemptionFlag() as preempt:
      while step < train_steps:
        try:
          batch = next(it)
        except StopIteration:
          raise ConfigError(f"task {mixture_or_task_name!r} ran out of data") from None
        logger.add_tokens(trainer_lib.count_tokens(batch))
        state, metrics = tr.train_step(state, batch)
        step += 1
        batches_done += 1
        pending.append(metrics)
        if step == 1 and hasattr(model, "first_step_note"):  # a fresh run: π_θ is its start
          note = model.first_step_note(jax.device_get(metrics))
          if note:
            print_fn(note)
        if step % log_period == 0 or step == train_steps:
          last = logger.write(step, _mean_metrics(jax.device_get(pending)))
          pending = []
          if step_callback is not None:
            step_callback(step, last)
        if eval_period and (step % eval_period == 0 or step == train_steps):
          last.update(run_eval(step))
        if preempt.reached(step, ckpt):
          print_fn(f"signal {preempt.signal}: saving a checkpoint at step {step}")
        if step % checkpoint_period == 0 or step == train_steps or preempt.requested:
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
  if step >= train_steps:
    if jax.process_index() == 0:
      checkpoints.write_manifest(checkpoints.resolve_params_path(model_dir), manifest)
      fs.atomic_write_text(fs.join(model_dir, pipeline.COMPLETED), f"{step}\n")
  if preempt.requested:
    raise trainer_lib.Preempted(
        f"preempted: checkpoint saved at step {step}/{train_steps} in {model_dir}; rerun the "
        "same command to resume")
  for fn in after_training:
    fn(model_dir)
  return last


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _scopes_of(entry: Callable) -> set:
  """The gin scopes that bind `entry` (the stages a config defines for it)."""
  selector = gin.config._INVERSE_REGISTRY[entry].selector  # pylint: disable=protected-access
  return {scope for (scope, sel) in gin.config._CONFIG if sel == selector and scope}  # pylint: disable=protected-access


def run_configured(entry: Callable = None, stage: Optional[str] = None) -> Any:
  """Calls the gin-configured `entry` (default: `train`), under gin scope `stage` if given.

  A stage run (`--stage=sft`, what the pipeline starts) builds that stage's artifact only: the
  training entry runs without its prerequisites and after-training steps.
  """
  entry = entry or train
  fn = gin.get_configurable(entry)
  kwargs = {}
  if stage:
    scopes = _scopes_of(entry)
    if stage not in scopes:
      raise ConfigError(f"--stage={stage}: the configuration binds no stage {stage!r} for "
                        f"{entry.__module__}.{entry.__name__} (its stages: "
                        f"{', '.join(sorted(scopes)) or 'none'})")
    if entry is train:
      kwargs = {"prerequisites": (), "after_training": ()}
  try:
    if stage:
      with gin.config_scope(stage):
        return fn(**kwargs)
    return fn()
  except (ValueError, KeyError) as e:
    if "Required bindings" in str(e) or "gin" in type(e).__module__:
      raise ConfigError("gin: " + " ".join(str(e).split())[:600]) from None
    raise


def main(argv: Optional[Sequence[str]] = None, entry: Callable = None) -> int:
  logging.basicConfig(level=logging.WARNING)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  argv = sys.argv[1:] if argv is None else argv
  prog = "rso_jax." + (entry.__module__.split(".")[-1] if entry else "train")

  def run():
    doc = sys.modules[entry.__module__].__doc__ if entry else __doc__
    flags = parse_flags(argv, doc)
    configure_gin(flags.files, flags.bindings, flags.search, stage=flags.stage)
    run_configured(entry, flags.stage)
  return cli_main(prog, run)


if __name__ == "__main__":
  # Run through the package module so gin files' `from rso_jax import train` is this one.
  from rso_jax import train as _train  # pylint: disable=g-import-not-at-top
  sys.exit(_train.main())
