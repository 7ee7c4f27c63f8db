"""Checkpoints that describe themselves: the orbax params layout plus a manifest.

A *params checkpoint* is a directory holding `params/` (an orbax StandardCheckpointer tree of
unboxed float arrays). Every step directory that the trainer's CheckpointManager writes
(`MODEL_DIR/checkpoints/<step>/`) has the same shape, so a finished run, a step of a run, or an
imported HF checkpoint can be passed wherever a checkpoint path is asked for. Upstream T5X's
runs (`MODEL_DIR/checkpoint_<step>/state`, orbax, written by `python -m t5x.train` with
gin/t5x/) load the same way: their params (`target`) are read without the optimizer state, and
the joined attention kernels of T5X's own network are split into rso_jax's per-head layout.

Beside it (in the run directory, and in the final step directory) lies `rso_manifest.json`,
which says what the checkpoint *is*, so one loader opens any of them with no macro telling it
the kind:

  kind             "seq2seq" (SFT or converted T5), "policy" (preference-trained),
                   "pairwise_rm" (the paper's ranking model ρ), "bt_rm" (Bradley–Terry)
  model_settings   the model class's loss-independent settings (e.g. BT pooling, separator)
  network          the network config's fields (`networks.to_json`: T5 or decoder-only)
  vocabulary       {"type": "bytes"}, {"type": "sentencepiece", "path": ..., "extra_ids": n,
                   "file": "spiece.model"} or {"type": "hf_tokenizer", "path": <abs
                   tokenizer.json>, "file": "tokenizer.json"} (a copy of the model file, and of
                   a HF tokenizer's tokenizer_config.json, kept beside the manifest)
  feature_lengths  the task feature lengths it was trained with ({"inputs": .., "targets": ..})
  task             the seqio task / mixture it was trained on (None for converted checkpoints)

A checkpoint written before manifests existed fails to load with a one-line error that names
the command adding one (`python -m rso_jax.checkpoints add-manifest DIR --kind=...`).

Every params checkpoint rso_jax writes also lists its files: `rso_files.json` (each file's
size), written after orbax has committed the items and, for the trainer's asynchronous saves,
before orbax's final rename, so a step never appears without it. A checkpoint is verified
before it is read (`verify`): orbax's own metadata files must parse and every listed file must
be there with its size. A damaged checkpoint is a one-line `CheckpointError` naming the path,
what is wrong and the intact steps beside it; training skips a damaged latest step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import jax
import orbax.checkpoint as ocp

from rso_jax import checkpoint_files
from rso_jax import errors
from rso_jax import fs
from rso_jax import network
from rso_jax import networks
from rso_jax.errors import CheckpointError
from rso_jax.tasks import vocab as vocab_lib

CHECKPOINT_SUBDIR = "checkpoints"
MANIFEST_FILE = "rso_manifest.json"
LEGACY_CONFIG_FILE = "t5_config.json"  # what runs wrote before manifests (read by add-manifest)
SPM_FILE = "spiece.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
T5X_STEP_PATTERN = r"checkpoint_(\d+)"  # upstream T5X's MODEL_DIR/checkpoint_<step>/state (orbax)
T5X_STATE_SUBDIR = "state"
FORMAT_VERSION = 1

GENERATIVE_KINDS = ("seq2seq", "policy")
# "oracle_rm": no network and no params -- the embedded task's r*/τ, optionally with calibrated
# noise (`inference.OracleRewardModel`, `tasks.oracle`).
ORACLE_KIND = "oracle_rm"
REWARD_KINDS = ("pairwise_rm", "bt_rm", ORACLE_KIND)
KINDS = GENERATIVE_KINDS + REWARD_KINDS
KIND_NAMES = {"seq2seq": "a seq2seq (SFT) policy", "policy": "a preference-trained policy",
              "pairwise_rm": "a pairwise ranking reward model ρ",
              "bt_rm": "a Bradley-Terry reward model",
              ORACLE_KIND: "the embedded task's oracle reward (r*/τ, noisy or exact)"}


@dataclasses.dataclass(frozen=True)
class Manifest:
  """What a checkpoint is (see the module docstring)."""
  kind: str
  network: Optional[networks.NetworkConfig]  # None only for ORACLE_KIND
  vocabulary: Optional[Mapping[str, Any]]
  feature_lengths: Optional[Mapping[str, int]] = None
  model_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  task: Optional[str] = None
  source: str = "train"
  # Which prompts of `task` it was trained on when the task is one side of the judge's held-out
  # split (`tasks.prompt_split.split_spec`): {source, side, fraction, salt, by}; None = all.
  data_split: Optional[Mapping[str, Any]] = None
  # The directory the manifest was read from (resolves the vocabulary's copied file).
  directory: Optional[str] = dataclasses.field(default=None, compare=False)

  def __post_init__(self):
    if self.kind not in KINDS:
      raise CheckpointError(f"manifest kind={self.kind!r}: use one of {KINDS}")
    if (self.network is None) != (self.kind == ORACLE_KIND):
      raise CheckpointError(f"manifest kind={self.kind!r} with network={self.network!r}: "
                            f"only {ORACLE_KIND!r} has no network")

  def to_json(self) -> dict:
    return {"format_version": FORMAT_VERSION, "kind": self.kind,
            "model_settings": dict(self.model_settings),
            "network": None if self.network is None else networks.to_json(self.network),
            "vocabulary": None if self.vocabulary is None else dict(self.vocabulary),
            "feature_lengths": (None if self.feature_lengths is None
                                else {k: int(v) for k, v in self.feature_lengths.items()}),
            "task": self.task, "source": self.source,
            **({} if self.data_split is None else {"data_split": dict(self.data_split)})}

  @classmethod
  def from_json(cls, d: Mapping[str, Any], directory: Optional[str] = None) -> "Manifest":
    net = None
    if d.get("kind") != ORACLE_KIND or d.get("network") is not None:  # an oracle has none
      net = networks.from_json(d["network"])
    return cls(kind=d["kind"], network=net, vocabulary=d.get("vocabulary"),
               feature_lengths=d.get("feature_lengths"),
               model_settings=d.get("model_settings") or {}, task=d.get("task"),
               source=d.get("source", "train"), data_split=d.get("data_split"),
               directory=directory)

  def get_vocabulary(self):
    """The seqio vocabulary this checkpoint reads and writes text with."""
    return vocabulary_from_spec(self.vocabulary, self.directory)


# ------------------------------------------------------------------------------ vocabularies


def vocabulary_spec(vocab: Any) -> dict:
  """A JSON description of a seqio vocabulary (bytes, SentencePiece or a HF tokenizer)."""
  import seqio  # pylint: disable=g-import-not-at-top
  if isinstance(vocab, seqio.ByteVocabulary):
    return {"type": "bytes"}
  if isinstance(vocab, seqio.SentencePieceVocabulary):
    return {"type": "sentencepiece", "path": vocab.sentencepiece_model_file,
            "extra_ids": int(vocab.extra_ids)}
  if isinstance(vocab, vocab_lib.HFTokenizerVocabulary):
    spec = {"type": "hf_tokenizer", "path": fs.abspath(vocab.tokenizer_file)}
    if vocab.tokenizer_config_file is None:  # its EOS came from the eos_token argument
      spec["eos_token"] = vocab.special_tokens["eos_token"]
    return spec
  raise CheckpointError(f"vocabulary {type(vocab).__name__} cannot be described in a manifest: "
                        "use seqio.ByteVocabulary, seqio.SentencePieceVocabulary or "
                        "tasks.vocab.HFTokenizerVocabulary")


def same_vocabulary(a: Any, b: Any) -> bool:
  """Same token ids for the same text (seqio vocabularies): same class, and for SentencePiece
  the same model file's bytes, wherever it lies (its extra sentinel ids, which no text encodes
  to, may differ); for a HF tokenizer the same tokenizer.json bytes (as read) and the same
  EOS."""
  import seqio  # pylint: disable=g-import-not-at-top
  if type(a) is not type(b):
    return False
  if isinstance(a, seqio.SentencePieceVocabulary):  # (sp_model includes the extra ids)
    return fs.read_bytes(a.sentencepiece_model_file) == fs.read_bytes(b.sentencepiece_model_file)
  if isinstance(a, vocab_lib.HFTokenizerVocabulary):
    return a.eos_id == b.eos_id and a.tokenizer_json == b.tokenizer_json
  return True


def _copied(spec: Mapping[str, Any], directory: Optional[str]) -> Optional[str]:
  """The vocabulary file copied beside a manifest (`spec["file"]` in `directory`), if there."""
  if directory and spec.get("file") and fs.exists(fs.join(directory, spec["file"])):
    return fs.join(directory, spec["file"])
  return None


def vocabulary_from_spec(spec: Optional[Mapping[str, Any]], directory: Optional[str] = None):
  """The seqio vocabulary of a manifest's `vocabulary` entry (the copied file first)."""
  if spec is None:
    raise CheckpointError(
        f"checkpoint {directory!r} has no vocabulary in its manifest: re-run `python -m "
        "rso_jax.convert` with --spm_path=... (or --vocabulary=bytes)")
  if spec.get("type") == "bytes":
    return vocab_lib.get_vocabulary()
  if spec.get("type") == "sentencepiece":
    path = _copied(spec, directory) or spec.get("path")
    return vocab_lib.get_vocabulary(path, int(spec.get("extra_ids", 0)))
  if spec.get("type") == "hf_tokenizer":
    path = _copied(spec, directory) or spec.get("path")
    if not path or not fs.exists(path):
      raise CheckpointError(
          f"the checkpoint's HF tokenizer {spec.get('path')!r} is missing (manifest in "
          f"{directory!r}, which holds no {HF_TOKENIZER_FILE} either)")
    return vocab_lib.hf_vocabulary(fs.abspath(path), spec.get("eos_token"))
  raise CheckpointError(f"manifest vocabulary {dict(spec)!r}: type must be bytes, "
                        "sentencepiece or hf_tokenizer")


# ------------------------------------------------------------------------------ manifest files


def _copy_beside(src: str, dst: str) -> None:
  if fs.abspath(src) != fs.abspath(dst):
    fs.atomic_write_bytes(dst, fs.read_bytes(src))


def write_manifest(directory: str, manifest: Manifest) -> str:
  """Writes `directory/rso_manifest.json` atomically; copies the vocabulary's files beside it (a
  SentencePiece model; a HF tokenizer.json with the tokenizer_config.json and
  chat_template.jinja beside it)."""
  fs.makedirs(directory)
  d = manifest.to_json()
  voc = d["vocabulary"]
  if voc and voc.get("type") in ("sentencepiece", "hf_tokenizer"):
    name = SPM_FILE if voc["type"] == "sentencepiece" else HF_TOKENIZER_FILE
    src = voc.get("path")
    if voc.get("file") and manifest.directory:  # a copy made earlier: carry it along
      src = fs.join(manifest.directory, voc["file"])
    if src and fs.exists(src):
      _copy_beside(src, fs.join(directory, name))
      if voc["type"] == "hf_tokenizer":
        for extra in (HF_TOKENIZER_CONFIG_FILE, vocab_lib.HF_CHAT_TEMPLATE_FILE):
          if fs.exists(fs.join(fs.dirname(src), extra)):
            _copy_beside(fs.join(fs.dirname(src), extra), fs.join(directory, extra))
      voc["file"] = name
  path = fs.join(directory, MANIFEST_FILE)
  fs.atomic_write_text(path, json.dumps(d, indent=2, sort_keys=True))
  return path


def _manifest_dirs(path: str):
  """Where a checkpoint's manifest may lie: the dir itself, its params dir, its run dir."""
  path = fs.abspath(path)
  yield path
  try:
    resolved = resolve_params_path(path)
  except FileNotFoundError:
    return
  yield resolved
  parent = fs.dirname(resolved)
  if fs.basename(parent) == CHECKPOINT_SUBDIR:  # <run>/checkpoints/<step>
    yield fs.dirname(parent)
  elif is_t5x_step(resolved):  # T5X's MODEL_DIR/checkpoint_<step>
    yield parent


def find_manifest(path: str) -> Optional[str]:
  for d in _manifest_dirs(path):
    if fs.exists(fs.join(d, MANIFEST_FILE)):
      return d
  return None


def read_manifest(path: str) -> Manifest:
  """The manifest of the checkpoint at `path` (a run, step, params or converted directory)."""
  p = fs.abspath(path)
  if not fs.exists(p):
    raise CheckpointError(f"checkpoint not found: {path!r}")
  d = find_manifest(p)
  if d is None:
    try:
      resolve_params_path(p)
    except FileNotFoundError as e:
      raise CheckpointError(str(e)) from None
    raise CheckpointError(
        f"checkpoint {path!r} has no {MANIFEST_FILE} (written before manifests existed?): add "
        f"one with `python -m rso_jax.checkpoints add-manifest {path} --kind="
        f"{{{','.join(KINDS)}}} [--spm_path=...] [--inputs_length=N --targets_length=N]`")
  mpath = fs.join(d, MANIFEST_FILE)
  text = fs.read_bytes(mpath)
  problem = checkpoint_files.json_error(mpath, text)
  if problem:
    raise CheckpointError(problem)
  raw = json.loads(text.decode("utf-8"))
  try:
    return Manifest.from_json(raw, directory=d)
  except (KeyError, TypeError, AttributeError, ValueError) as e:
    if isinstance(e, CheckpointError):
      raise
    what = f"lacks {e}" if isinstance(e, KeyError) else str(e)
    raise CheckpointError(f"{mpath} is malformed: {what}") from None


def check_kind(manifest: Manifest, path: str, expect: Sequence[str], role: str) -> None:
  """Raises CheckpointError (one line) unless the checkpoint's kind is one of `expect`."""
  if manifest.kind not in expect:
    wanted = " or ".join(KIND_NAMES[k] for k in expect)
    raise CheckpointError(f"{role} checkpoint {path!r} is {KIND_NAMES[manifest.kind]} "
                          f"(kind={manifest.kind!r}), but {role} needs {wanted}")


def read_config(path: str) -> networks.NetworkConfig:
  """The network config of the checkpoint at `path` (from its manifest)."""
  return read_manifest(path).network


# ------------------------------------------------------------------------------ params


def save_params(path: str, params: Any, manifest: Optional[Manifest] = None) -> None:
  """Writes `params` (and the manifest) to `path` atomically (orbax commits by rename)."""
  path = fs.abspath(path)  # URLs (gs://...) go to orbax as they are
  fs.makedirs(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(fs.join(path, "params"), params, force=True)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    checkpoint_files.record_files(path, ("params",))
  if manifest is not None:
    write_manifest(path, manifest)


# ------------------------------------------------------------------------------ verification
def _items_of(params_dir: str) -> Tuple[str, ...]:
  return (T5X_STATE_SUBDIR,) if is_t5x_step(params_dir) else ("params",)


def _run_of(params_dir: str) -> Optional[str]:
  """The run directory that holds the step `params_dir` (None for a lone checkpoint)."""
  parent = fs.dirname(params_dir)
  if fs.basename(parent) == CHECKPOINT_SUBDIR and re.fullmatch(r"\d+", fs.basename(params_dir)):
    return fs.dirname(parent)
  if is_t5x_step(params_dir):
    return parent
  return None


def intact_steps(model_dir: str) -> List[str]:
  """The step directories of the run `model_dir` whose params verify, newest first."""
  dirs = [step_path(model_dir, s) for s in saved_steps(model_dir)]
  dirs += [fs.join(model_dir, f"checkpoint_{s}") for s in _t5x_steps(model_dir)]
  dirs.sort(key=lambda d: int(re.findall(r"\d+", fs.basename(d))[-1]), reverse=True)
  return [d for d in dirs if checkpoint_files.verify(d, _items_of(d)) is None]


def damaged_error(params_dir: str, reason: str) -> CheckpointError:
  """The one-line error for a damaged checkpoint: its path, what is wrong, the intact steps."""
  run = _run_of(params_dir)
  if run is None:
    return CheckpointError(f"checkpoint {params_dir} is damaged: {reason}")
  intact = [d for d in intact_steps(run) if d != params_dir]
  others = (f"intact steps of {run}: {', '.join(intact)}" if intact
            else f"{run} has no intact step")
  return CheckpointError(f"checkpoint {params_dir} is damaged: {reason}; {others}")


def verified(params_dir: str) -> str:
  """`params_dir` once its params verify (else the one-line `damaged_error`)."""
  reason = checkpoint_files.verify(params_dir, _items_of(params_dir))
  if reason:
    raise damaged_error(params_dir, reason)
  return params_dir


def _t5x_steps(model_dir: str) -> list:
  """Steps of the T5X checkpoints (`checkpoint_<step>/state`) in `model_dir`."""
  if not fs.isdir(model_dir):
    return []
  return [int(m.group(1)) for m in (re.fullmatch(T5X_STEP_PATTERN, n)
                                      for n in fs.listdir(model_dir))
          if m and fs.isdir(fs.join(model_dir, m.group(0), T5X_STATE_SUBDIR))]


def is_t5x_step(path: str) -> bool:
  """`path` is one step of a T5X run (`MODEL_DIR/checkpoint_<step>`, orbax `state/` inside)."""
  return (re.fullmatch(T5X_STEP_PATTERN, fs.basename(path)) is not None
          and fs.isdir(fs.join(path, T5X_STATE_SUBDIR)))


def saved_steps(model_dir: str) -> List[int]:
  """The steps of `model_dir`'s saved params checkpoints, ascending ([] for none)."""
  d = fs.join(model_dir, CHECKPOINT_SUBDIR)
  if not fs.isdir(d):
    return []
  return sorted(int(n) for n in fs.listdir(d) if re.fullmatch(r"\d+", n)
                and fs.isdir(fs.join(d, n, "params")) and _finalized(fs.join(d, n)))


def _finalized(step_dir: str) -> bool:
  """Whether orbax has finished the step. Locally a step directory appears only by orbax's
  final rename; object stores have no rename, so a step being written is already there and
  orbax marks the finished one with `commit_success.txt` (rso_jax's file list comes just
  before it, once every item is committed)."""
  if not fs.is_url(step_dir):
    return True
  return (fs.exists(fs.join(step_dir, "commit_success.txt"))
          or fs.exists(fs.join(step_dir, checkpoint_files.FILES_FILE)))


def step_path(model_dir: str, step: int) -> str:
  """The directory of `model_dir`'s checkpoint at `step` (a policy path for inference)."""
  return fs.join(model_dir, CHECKPOINT_SUBDIR, str(int(step)))


def latest_step(model_dir: str) -> Optional[int]:
  steps = saved_steps(model_dir)
  return steps[-1] if steps else None


def resolve_params_path(path: str) -> str:
  """A params-checkpoint directory from a run dir, a step dir, or a params dir itself."""
  path = fs.abspath(path)
  if fs.isdir(fs.join(path, "params")) or is_t5x_step(path):
    return path
  step = latest_step(path)
  if step is not None:
    return step_path(path, step)
  t5x_steps = _t5x_steps(path)
  if t5x_steps:
    return fs.join(path, f"checkpoint_{max(t5x_steps)}")
  raise FileNotFoundError(
      f"no params checkpoint under {path}: no params/ and no checkpoint steps (expected "
      f"{path}/params, {path}/{CHECKPOINT_SUBDIR}/<step>/params or T5X's "
      f"{path}/checkpoint_<step>/state)")


class _NoStepMetadataWarning(logging.Filter):
  """orbax warns that a params item has no step metadata file of its own: it lives in the step
  directory, as the trainer's CheckpointManager writes it. A normal load says nothing."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith("Metadata file does not exist")


_QUIET = _NoStepMetadataWarning()


def load_params(path: str, abstract_params: Any = None) -> Any:
  """Restores params from `path` (see `resolve_params_path`), verified first (`verify`).

  `abstract_params`: optional tree of `jax.ShapeDtypeStruct` (with `.sharding`) to restore
  directly into sharded device arrays; without it, arrays come back whole on this process's
  first device, whatever mesh (or number of hosts) saved them.
  """
  resolved = verified(resolve_params_path(path))
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(_QUIET)
  try:
    if is_t5x_step(resolved):
      return _load_t5x_params(resolved, abstract_params)
    ppath = fs.join(resolved, "params")
    with ocp.StandardCheckpointer() as ckptr:
      if abstract_params is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract_params = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            ckptr.metadata(ppath).item_metadata.tree)
      return ckptr.restore(ppath, abstract_params)
  except Exception as e:  # pylint: disable=broad-except
    damage = checkpoint_files.read_damage(e)
    if damage is None:
      raise
  finally:
    absl_logger.removeFilter(_QUIET)
  checkpoint_files.drop_pending_reads()
  raise damaged_error(resolved, damage)


# Attention kernels: rso_jax keeps heads as their own axis ([embed, heads, kv] and
# [heads, kv, embed]); T5X's `t5x.examples.t5` network joins them ([embed, heads*kv]).
_ATTENTION_KERNELS = ("query", "key", "value", "out")


def _is_attention_kernel(path: Tuple[str, ...]) -> bool:
  return len(path) >= 2 and path[-1] == "kernel" and path[-2] in _ATTENTION_KERNELS


def split_attention_heads(params: Any, num_heads: int) -> Any:
  """T5X-network params (joined `[E, H*D]` / `[H*D, E]` attention kernels) -> rso_jax's layout.

  Kernels already split (a T5X run of rso_jax's network) come back unchanged.
  """
  import flax  # pylint: disable=g-import-not-at-top
  flat = flax.traverse_util.flatten_dict(params)
  for k, v in flat.items():
    if _is_attention_kernel(k) and v.ndim == 2:
      if k[-2] == "out":  # [H*D, E] -> [H, D, E]
        flat[k] = v.reshape(num_heads, v.shape[0] // num_heads, v.shape[1])
      else:  # [E, H*D] -> [E, H, D]
        flat[k] = v.reshape(v.shape[0], num_heads, v.shape[1] // num_heads)
  return flax.traverse_util.unflatten_dict(flat)


def join_attention_heads(params: Any) -> Any:
  """rso_jax's params -> the joined attention-kernel layout of T5X's network."""
  import flax  # pylint: disable=g-import-not-at-top
  flat = flax.traverse_util.flatten_dict(params)
  for k, v in flat.items():
    if _is_attention_kernel(k) and v.ndim == 3:
      flat[k] = (v.reshape(-1, v.shape[-1]) if k[-2] == "out" else v.reshape(v.shape[0], -1))
  return flax.traverse_util.unflatten_dict(flat)


def _load_t5x_params(step_dir: str, abstract_params: Any = None) -> Any:
  """The params (`target`) of a T5X checkpoint step, in rso_jax's layout (no optimizer state)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  state = fs.join(step_dir, T5X_STATE_SUBDIR)
  with ocp.PyTreeCheckpointer() as ckptr:
    tree = ckptr.metadata(state).item_metadata.tree
    if "target" not in tree:
      raise CheckpointError(f"T5X checkpoint {step_dir!r} holds no 'target' (params)")
    meta = tree["target"]
    item = {"target": jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)}
    args = {"target": jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), meta)}
    params = ckptr.restore(state, args=ocp.args.PyTreeRestore(
        item=item, restore_args=args, partial_restore=True))["target"]
  heads = params["encoder"]["relpos_bias"]["rel_embedding"].shape[0]  # [heads, buckets]
  params = split_attention_heads(params, heads)
  if abstract_params is None:
    return params
  return jax.tree.map(lambda a, x: jax.device_put(x.astype(a.dtype), a.sharding),
                      abstract_params, params)


def save_t5x(model_dir: str, params: Any, manifest: Manifest, *, joined_heads: bool = False,
             step: int = 0) -> str:
  """Writes `params` as upstream T5X's `model_dir/checkpoint_<step>` (orbax, params only).

  T5X's `utils.RestoreCheckpointConfig(path=..., mode='specific')` restores it (the optimizer
  state then starts fresh); `joined_heads=True` writes the attention kernels the way T5X's own
  network holds them. The manifest goes beside it, so rso_jax reads the directory back.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  model_dir = fs.abspath(model_dir)
  params = jax.tree.map(np.asarray, params)
  if joined_heads:
    params = join_attention_heads(params)
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint", create=True)
  with ocp.CheckpointManager(model_dir, item_names=(T5X_STATE_SUBDIR,),
                             options=options) as mgr:
    if step in mgr.all_steps():
      raise CheckpointError(f"{model_dir}/checkpoint_{step} exists")
    mgr.save(step, args=ocp.args.Composite(**{T5X_STATE_SUBDIR: ocp.args.PyTreeSave(
        {"target": params, "state": {"step": np.asarray(step, np.int32)}})}))
    mgr.wait_until_finished()
  if jax.process_index() == 0:
    checkpoint_files.record_files(fs.join(model_dir, f"checkpoint_{step}"), (T5X_STATE_SUBDIR,))
  write_manifest(model_dir, dataclasses.replace(manifest, source="t5x"))
  return fs.join(model_dir, f"checkpoint_{step}")


def load(path: str, abstract_params: Any = None) -> Tuple[Manifest, Any]:
  """(manifest, params) of any checkpoint: the one loader."""
  manifest = read_manifest(path)
  return manifest, load_params(path, abstract_params)


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)


# ------------------------------------------------------------------------------ CLI


def _describe(path: str) -> str:
  m = read_manifest(path)
  params = None if m.kind == ORACLE_KIND else resolve_params_path(path)  # an oracle has none
  return json.dumps(dict(m.to_json(), manifest_dir=m.directory, params=params), indent=2)


def _add_manifest(args) -> str:
  path = fs.abspath(args.path)
  if find_manifest(path) is not None and not args.force:
    raise CheckpointError(f"{path!r} already has a manifest (pass --force to replace it)")
  resolve_params_path(path)  # a params checkpoint must be there
  config = None
  for d in (path, resolve_params_path(path)):
    f = fs.join(d, LEGACY_CONFIG_FILE)
    if fs.exists(f):
      net = json.loads(fs.read_text(f))
      net["mlp_activations"] = tuple(net["mlp_activations"])
      config = network.T5Config(**net)
      break
  if config is None:
    raise CheckpointError(f"no {LEGACY_CONFIG_FILE} at {path!r}: cannot tell the network config")
  voc = ({"type": "sentencepiece", "path": fs.abspath(args.spm_path),
          "extra_ids": args.extra_ids} if args.spm_path else {"type": "bytes"})
  lengths = None
  if args.inputs_length and args.targets_length:
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  settings = json.loads(args.model_settings) if args.model_settings else {}
  m = Manifest(kind=args.kind, network=config, vocabulary=voc, feature_lengths=lengths,
               model_settings=settings, task=args.task, source="add-manifest")
  return write_manifest(path, m)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Exit status 0 done, 2 a user error (one line; RSO_JAX_TRACEBACK=1 for the traceback)."""
  parser = errors.ArgumentParser(prog="python -m rso_jax.checkpoints",
                                    error_prefix="rso_jax.checkpoints",
                                    description="Describe a checkpoint, add a manifest to one, or write one "
                                    "for upstream T5X.")
  sub = parser.add_subparsers(dest="cmd", required=True)
  d = sub.add_parser("describe", help="print a checkpoint's manifest")
  d.add_argument("path")
  a = sub.add_parser("add-manifest", help="describe a checkpoint written before manifests")
  a.add_argument("path")
  a.add_argument("--kind", required=True, choices=KINDS)
  a.add_argument("--spm_path", default=None, help="SentencePiece model (default: bytes)")
  a.add_argument("--extra_ids", type=int, default=0)
  a.add_argument("--inputs_length", type=int, default=None)
  a.add_argument("--targets_length", type=int, default=None)
  a.add_argument("--task", default=None)
  a.add_argument("--model_settings", default=None, help="JSON, e.g. '{\"pooling\": \"mean\"}'")
  a.add_argument("--force", action="store_true")
  t = sub.add_parser("to-t5x", help="write a checkpoint as upstream T5X's MODEL_DIR/checkpoint_0")
  t.add_argument("path")
  t.add_argument("model_dir")
  t.add_argument("--t5x_network", action="store_true",
                 help="attention kernels as T5X's own network holds them (gin/t5x/networks/t5x.gin)")
  args = parser.parse_args(argv)

  def run():
    if args.cmd == "describe":
      print(_describe(args.path))
    elif args.cmd == "to-t5x":
      kind = read_manifest(args.path).kind
      if kind == ORACLE_KIND:
        raise CheckpointError(f"{args.path} is {KIND_NAMES[kind]}: it has no params to write")
      fs.check_disjoint(args.model_dir, {"the checkpoint": args.path,
                                         "its manifest directory": find_manifest(args.path)},
                        out_name="model_dir")
      manifest, params = load(args.path)
      print(f"wrote {save_t5x(args.model_dir, params, manifest, joined_heads=args.t5x_network)}")
    else:
      print(f"wrote {_add_manifest(args)}")

  # ValueError: CheckpointError, a malformed --model_settings JSON.
  return errors.report("rso_jax.checkpoints", run,
                       user_errors=(*errors.USER_ERRORS, ValueError))


if __name__ == "__main__":
  sys.exit(main())
