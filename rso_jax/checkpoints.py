"""Parameter checkpoints: one orbax layout shared by the trainer, the converter and the stages.

A *params checkpoint* is a directory holding `params/` (an orbax StandardCheckpointer tree of
unboxed float arrays) and, optionally, `t5_config.json`. Every step directory that the trainer's
CheckpointManager writes (`MODEL_DIR/checkpoints/<step>/`) has the same shape, so a finished run,
a step of a run, or an imported HF checkpoint can all be passed wherever a params path is asked
for (`INITIAL_CHECKPOINT_PATH`, the sampling stage's policy and reward model).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp

from rso_jax import network

CHECKPOINT_SUBDIR = "checkpoints"
CONFIG_FILE = "t5_config.json"


def save_params(path: str, params: Any, config: Optional[network.T5Config] = None) -> None:
  """Writes `params` (and the network config) to `path` atomically (orbax commits by rename)."""
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "params"), params, force=True)
    ckptr.wait_until_finished()
  if config is not None:
    write_config(path, config)


def write_config(path: str, config: network.T5Config) -> None:
  tmp = os.path.join(path, CONFIG_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(path, CONFIG_FILE))


def read_config(path: str) -> Optional[network.T5Config]:
  """The `T5Config` stored beside a params checkpoint (or in its run directory), if any."""
  for p in (resolve_params_path(path), path):
    f = os.path.join(p, CONFIG_FILE)
    if os.path.exists(f):
      with open(f) as fh:
        d = json.load(fh)
      d["mlp_activations"] = tuple(d["mlp_activations"])
      return network.T5Config(**d)
  return None


def latest_step(model_dir: str) -> Optional[int]:
  d = os.path.join(model_dir, CHECKPOINT_SUBDIR)
  if not os.path.isdir(d):
    return None
  steps = [int(n) for n in os.listdir(d) if re.fullmatch(r"\d+", n)
           and os.path.isdir(os.path.join(d, n, "params"))]
  return max(steps) if steps else None


def resolve_params_path(path: str) -> str:
  """A params-checkpoint directory from a run dir, a step dir, or a params dir itself."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(os.path.join(path, "params")):
    return path
  step = latest_step(path)
  if step is not None:
    return os.path.join(path, CHECKPOINT_SUBDIR, str(step))
  raise FileNotFoundError(
      f"no params checkpoint at {path!r}: expected {path}/params or "
      f"{path}/{CHECKPOINT_SUBDIR}/<step>/params")


def load_params(path: str, abstract_params: Any = None) -> Any:
  """Restores params from `path` (see `resolve_params_path`).

  `abstract_params`: optional tree of `jax.ShapeDtypeStruct` (with `.sharding`) to restore
  directly into sharded device arrays; without it, arrays come back on the default device.
  """
  ppath = os.path.join(resolve_params_path(path), "params")
  with ocp.StandardCheckpointer() as ckptr:
    if abstract_params is None:
      return ckptr.restore(ppath)
    return ckptr.restore(ppath, abstract_params)


def load_model(path: str) -> Tuple[network.T5Config, Any]:
  """(config, params) from a params checkpoint that has its config beside it."""
  config = read_config(path)
  if config is None:
    raise FileNotFoundError(f"no {CONFIG_FILE} beside the checkpoint at {path!r}")
  return config, load_params(path)


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
