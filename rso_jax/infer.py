r"""Inference CLI (like t5x.infer): a checkpoint's responses to prompts, written as JSONL.

  python -m rso_jax.infer --gin_file=gin/stages/infer.gin \
      --gin.CHECKPOINT=\"runs/embedded/rso_hinge\" --gin.PROMPTS_FILE=\"prompts.jsonl\" \
      --gin.OUTPUT=\"out.jsonl\" --gin.NUM_DECODES=4 \
      [--gin.REWARD_CHECKPOINT=\"runs/embedded/reward_bt\"] [--gin.GREEDY=True]
  python -m rso_jax.infer --gin_file=gin/stages/infer.gin --gin.CHECKPOINT=\"runs/embedded/sft\" \
      --gin.TASK=\"'synthetic_prompts'\" --gin.NUM_PROMPTS=64 --gin.OUTPUT=\"out.jsonl\"

Prompts come from exactly one of
  * PROMPTS_FILE: JSONL, one object per line with a string `prompt` field (blank lines are
    skipped); every other field is carried to the output line unchanged;
  * TASK: a registered seqio task or mixture; its `inputs_pretokenized` texts of SPLIT, in order.
NUM_PROMPTS keeps the first N of either.

The checkpoint (any generative kind: "seq2seq" or "policy") is opened by `inference.load` from
its manifest, with its own vocabulary and lengths (INPUT_LENGTH / MAX_DECODE_LENGTH override
them; over-long prompts have their context cut by the inference layer's rule, KEEP_CONTEXT).
With REWARD_CHECKPOINT, every response is also scored by that reward model (pairwise ρ: paper
Eq. 7, `r(x, y) = logit ρ(x, y, y_b)` against the prompt's first finished non-empty response
y_b, else its first, whose own reward is exactly 0; Bradley–Terry: `r(x, y)`).

OUTPUT gets one line per prompt, written atomically (a temp file renamed when complete):

  {"prompt": ..., <carried fields>, "responses": [N texts], "logp": [N untempered log π(y|x)],
   "logq": [N log q(y|x) under the sampling law] (not for greedy decoding),
   "finished": [N bools: EOS within the decode length], "prompt_truncated": bool,
   "rewards": [N] (only with a reward model; null where the response does not fit it)}

Non-finite numbers are written as null. Samples are a function of (RANDOM_SEED, BATCH_SIZE,
prompts) only, not of the mesh. A one-line summary (prompts, responses, seconds, decoded
tokens/s, truncated prompts, unfinished responses, mean reward) is printed at the end. Errors in
the configuration or the input (wrong checkpoint kind, malformed JSONL line, both or neither of
PROMPTS_FILE and TASK) are one line on stderr with exit status 2; nothing is written to OUTPUT.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np


from rso_jax import checkpoints
from rso_jax import cli
from rso_jax import datasets
from rso_jax import errors
from rso_jax import fs
from rso_jax import inference
from rso_jax import partitioning
from rso_jax import recipe
from rso_jax import textfiles
from rso_jax.errors import ConfigError

# Keys `infer` writes: a prompts-file field of the same name would be overwritten.
OUTPUT_KEYS = ("responses", "logp", "logq", "finished", "prompt_truncated", "rewards")


# ------------------------------------------------------------------------------ prompts
def read_prompts_file(path: str) -> Tuple[List[str], List[Dict[str, Any]]]:
  """(prompts, carried fields) of a JSONL prompts file; a bad line is a ConfigError naming
  `path:line` (invalid UTF-8: `errors.DataError`, "invalid UTF-8 at byte N")."""
  if not fs.isfile(path):
    raise ConfigError(f"PROMPTS_FILE {path!r} not found")
  prompts, extras = [], []
  for lineno, line in textfiles.read_lines(path):
    if not line.strip():
      continue
    where = f"{path}:{lineno}"
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise ConfigError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
      raise ConfigError(f"{where}: a line must be a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj:
      raise ConfigError(f"{where}: no 'prompt' field (fields: {sorted(obj)})")
    if not isinstance(obj["prompt"], str):
      raise ConfigError(f"{where}: 'prompt' must be a string, got "
                        f"{type(obj['prompt']).__name__}")
    clash = [k for k in OUTPUT_KEYS if k in obj]
    if clash:
      raise ConfigError(f"{where}: field(s) {clash} are written by infer; rename them")
    prompts.append(obj.pop("prompt"))
    extras.append(obj)
  return prompts, extras


def read_task_prompts(task: str, split: str, num_prompts: Optional[int]) -> List[str]:
  """The `inputs_pretokenized` texts of a seqio task / mixture split, in order."""
  datasets.check_task(task, "TASK")
  try:
    return datasets.read_prompts(task, split, num_prompts)
  except errors.DataError:
    raise  # already `<file>:<line>: <reason>`
  except ValueError as e:  # no such split, no inputs_pretokenized, no prompts
    raise ConfigError(f"TASK={task!r}: {' '.join(str(e).split())[:400]}") from None


def _floats(values) -> List[Optional[float]]:
  return [float(v) if math.isfinite(float(v)) else None for v in np.asarray(values).ravel()]


def _check_output(output: str) -> str:
  if not output:
    raise ConfigError("OUTPUT is empty: pass --gin.OUTPUT=\\\"out.jsonl\\\"")
  output = fs.abspath(output)
  if fs.isdir(output):
    raise ConfigError(f"OUTPUT={output!r} is a directory: name a file")
  if fs.is_url(output):  # gs://...: the object store says at write time
    return output
  parent = os.path.dirname(output)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"OUTPUT={output!r}: {parent!r} is not a writable directory")
  return output


def _write_jsonl_atomically(path: str, rows: Sequence[Dict[str, Any]]) -> None:
  """Process 0 writes (every process computed the same rows); the others wait for it."""
  if jax.process_index() > 0:
    partitioning.sync("infer: output written")
    return
  fs.makedirs(fs.dirname(path))
  fs.atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"
                                     for row in rows))
  partitioning.sync("infer: output written")


# ------------------------------------------------------------------------------ inference
def _check_args(*, checkpoint, output, prompts_file, task, num_prompts, num_decodes,
                temperature, top_k, top_p, greedy, max_decode_length, input_length,
                keep_context, reward_checkpoint, batch_size) -> str:
  """Refuses values that cannot run, before anything is loaded; returns OUTPUT's path."""
  if (prompts_file is None) == (task is None):
    raise ConfigError("set exactly one of PROMPTS_FILE and TASK (got "
                      f"{'both' if prompts_file is not None else 'neither'})")
  if not checkpoint:
    raise ConfigError("CHECKPOINT is empty")
  output = _check_output(output)
  fs.check_disjoint(output, {"PROMPTS_FILE": prompts_file, "CHECKPOINT": checkpoint,
                             "REWARD_CHECKPOINT": reward_checkpoint}, out_name="OUTPUT",
                    new_inside_ok=True)
  errors.check_int("NUM_PROMPTS", num_prompts, optional=True)
  errors.check_int("NUM_DECODES", num_decodes)
  if greedy and num_decodes != 1:
    raise ConfigError(f"greedy decoding (GREEDY=True or temperature=0) gives one response per "
                      f"prompt, but NUM_DECODES={num_decodes}")
  recipe.SamplingRecipe(num_decodes, num_decodes, temperature, top_k, top_p)
  if keep_context not in inference.KEEP_CONTEXT:
    raise ConfigError(f"KEEP_CONTEXT={keep_context!r}: use one of {inference.KEEP_CONTEXT}")
  errors.check_int("BATCH_SIZE", batch_size)
  errors.check_int("INPUT_LENGTH", input_length, optional=True)
  errors.check_int("MAX_DECODE_LENGTH", max_decode_length, optional=True)
  return output


def _read_prompts(prompts_file: Optional[str], task: Optional[str], split: str,
                  num_prompts: Optional[int]) -> Tuple[List[str], List[Dict[str, Any]]]:
  """(prompts, each prompt's other fields) from PROMPTS_FILE or a task's split."""
  if prompts_file is None:
    prompts = read_task_prompts(task, split, num_prompts)
    return prompts, [{} for _ in prompts]
  prompts, extras = read_prompts_file(prompts_file)
  if num_prompts is not None:
    prompts, extras = prompts[:num_prompts], extras[:num_prompts]
  if not prompts:
    raise ConfigError(f"PROMPTS_FILE {prompts_file!r} holds no prompts")
  return prompts, extras


def _rows(prompts, extras, out: inference.Generation, finished: np.ndarray,
          rewards: Optional[np.ndarray], greedy: bool) -> List[Dict[str, Any]]:
  """One output row per prompt (see the module docstring)."""
  rows = []
  for i, prompt in enumerate(prompts):
    row = {"prompt": prompt}
    row.update(extras[i])
    row["responses"] = list(out.texts[i])
    row["logp"] = _floats(out.model_logps[i])
    if not greedy:
      row["logq"] = _floats(out.proposal_logps[i])
    row["finished"] = [bool(v) for v in finished[i]]
    row["prompt_truncated"] = bool(out.prompt_truncated[i])
    if rewards is not None:
      row["rewards"] = _floats(rewards[i])
    rows.append(row)
  return rows


def infer(*, checkpoint: str, output: str, prompts_file: Optional[str] = None,
          task: Optional[str] = None, split: str = "validation",
          num_prompts: Optional[int] = None, num_decodes: int = 1,
          temperature: float = recipe.PAPER.temperature,
          top_k: Optional[int] = recipe.PAPER.top_k, top_p: Optional[float] = recipe.PAPER.top_p,
          greedy: bool = False, max_decode_length: Optional[int] = None,
          input_length: Optional[int] = None, keep_context: str = "start",
          reward_checkpoint: Optional[str] = None, batch_size: int = 16, seed: int = 0,
          mesh_shape: Sequence[int] = (-1, 1, 1),
          logical_rules: Optional[Sequence[Tuple[str, Any]]] = None,
          print_fn=print) -> Dict[str, Any]:
  """Decodes `num_decodes` responses per prompt, optionally rewards them; writes `output`.

  See the module docstring for the inputs and the output format. `greedy` (or temperature 0)
  decodes once per prompt (num_decodes must be 1) and writes no `logq`. Input problems raise
  `errors.ConfigError`, checkpoints of the wrong kind `errors.CheckpointError` (both
  ValueErrors, one line). Returns the summary.
  """
  t0 = time.time()
  greedy = bool(greedy) or temperature == 0
  output = _check_args(
      checkpoint=checkpoint, output=output, prompts_file=prompts_file, task=task,
      num_prompts=num_prompts, num_decodes=num_decodes, temperature=temperature, top_k=top_k,
      top_p=top_p, greedy=greedy, max_decode_length=max_decode_length,
      input_length=input_length, keep_context=keep_context,
      reward_checkpoint=reward_checkpoint, batch_size=batch_size)
  prompts, extras = _read_prompts(prompts_file, task, split, num_prompts)
  # --- checkpoints (kinds checked from the manifests first) ---
  mesh = partitioning.create_mesh(mesh_shape)
  policy = inference.load(checkpoint, mesh=mesh, expect=checkpoints.GENERATIVE_KINDS,
                          role="policy", batch_size=batch_size, keep_context=keep_context,
                          feature_lengths={"inputs": input_length,
                                           "targets": max_decode_length}, rules=logical_rules)
  scorer = None
  if reward_checkpoint:
    # One reward batch holds about one decode batch's responses (at most 256 rows).
    scorer = inference.load(reward_checkpoint, mesh=mesh, expect=checkpoints.REWARD_KINDS,
                            role="reward model",
                            batch_size=max(batch_size, min(batch_size * num_decodes, 256)),
                            keep_context=keep_context, rules=logical_rules,
                            response_length=policy.feature_lengths["targets"])
  # --- decode, score, write ---
  t_dec = time.time()
  if greedy:
    out = policy.greedy(prompts, top_k=top_k)
  else:
    out = policy.generate(prompts, key=jax.random.key(seed), num_decodes=num_decodes,
                          temperature=temperature, top_k=top_k, top_p=top_p)
  decode_seconds = time.time() - t_dec
  finished = np.asarray(out.finished, bool)
  rewards = None
  if scorer is not None:
    rewards = np.asarray(scorer.reward(prompts, out.texts, valid=finished), np.float32)
  _write_jsonl_atomically(output, _rows(prompts, extras, out, finished, rewards, greedy))
  tokens = int(np.asarray(out.lengths).sum())
  summary = {"prompts": len(prompts), "responses": int(finished.size),
             "wall_seconds": time.time() - t0, "decode_seconds": decode_seconds,
             "decoded_tokens": tokens,
             "tokens_per_second": tokens / decode_seconds if decode_seconds > 0 else float("nan"),
             "prompts_truncated": int(np.sum(out.prompt_truncated)),
             "unfinished": int((~finished).sum()), "output": output}
  if rewards is not None:
    ok = np.isfinite(rewards)
    summary["mean_reward"] = float(rewards[ok].mean()) if ok.any() else float("nan")
    summary["rewards_unscorable"] = int((~ok).sum())
  print_fn(format_summary(summary))
  return summary


def format_summary(s: Dict[str, Any]) -> str:
  line = (f"infer: {s['prompts']} prompts, {s['responses']} responses in "
          f"{s['wall_seconds']:.1f}s ({s['tokens_per_second']:.1f} decoded tokens/s), "
          f"{s['prompts_truncated']} truncated prompts, {s['unfinished']} unfinished")
  if "mean_reward" in s:
    line += (f", mean reward {s['mean_reward']:.4f} ({s['rewards_unscorable']} unscorable)")
  return line + f" -> {s['output']}"


# ------------------------------------------------------------------------------ CLI
def infer_configured(**kwargs):
  """Entry point for gin (`infer.infer_configured.*` bindings are `infer`'s arguments).

  A binding `infer` does not take is a one-line ConfigError naming it (`cli.checked_call`),
  and so is a checkpoint of the wrong kind.
  """
  return cli.checked_call(infer, kwargs, "infer_configured")


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`python -m rso_jax.infer`: the exit status of every rso_jax command."""
  return cli.main(argv, infer_configured)


if __name__ == "__main__":
  # Run through the package module so the gin file's `from rso_jax import infer` is this one.
  from rso_jax import infer as _infer  # pylint: disable=g-import-not-at-top
  sys.exit(_infer.main())
