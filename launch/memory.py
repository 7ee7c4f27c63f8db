"""Per-device memory of a policy-training run, from the configs alone (nothing is run).

    python launch/memory.py [--sizes base,large,xl,xxl] [--meshes "1,8,1;1,4,2;1,64,1"]
                            [--optimizer adamw] [--batch 64] [--inputs 1024] [--targets 128]

For each model size (`gin/models/<size>.gin`: T5 v1.1, or a decoder-only family's) and mesh (data, fsdp, tensor), the params and
optimizer state are shaped with `jax.eval_shape` and sharded exactly as the trainer shards
them (`trainer.state_shardings` over `partitioning.LOGICAL_RULES`, on an abstract mesh: no
devices needed); per-device bytes are the shard shapes' bytes. Activations are an ESTIMATE
(no rematerialization, the config's activation dtype, logits in float32) for one step of the
preference loss: `batch` pairs split over data×fsdp, each prompt encoded once and two
responses decoded against it; per layer and token it counts ~10·E + 3·F values in the encoder
and ~14·E + 3·F in the decoder (inputs of each matmul, norm and activation kept for the
backward pass), the attention probabilities, and the logits with their softmax; tensor
parallelism divides the F, head and vocabulary terms. Treat it as ±2×.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GIB = 2.0 ** 30


def size_config(size: str):
  """The network config that gin/models/<size>.gin binds (a T5Config or a DecoderConfig)."""
  import gin  # pylint: disable=g-import-not-at-top
  from rso_jax import decoder_network, network  # pylint: disable=g-import-not-at-top
  path = os.path.join(ROOT, "gin", "models", f"{size}.gin")
  if not os.path.exists(path):
    raise ValueError(f"no model size {size!r}: gin/models/ has "
                     f"{sorted(f[:-4] for f in os.listdir(os.path.dirname(path)))}")
  with gin.unlock_config():
    gin.clear_config()
    gin.parse_config_file(path)
    try:  # registered only when the file binds it
      decoder = gin.get_bindings("decoder_network.DecoderConfig")
    except ValueError:
      decoder = {}
    config = (decoder_network.DecoderConfig(**decoder) if decoder
              else network.T5Config(**gin.get_bindings("network.T5Config")))
    gin.clear_config()
  return config


def device_bytes(config, mesh_shape: Sequence[int], optimizer: str = "adamw"
                 ) -> Tuple[int, int, int]:
  """(number of params, params bytes per device, optimizer-state bytes per device)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import AbstractMesh  # pylint: disable=g-import-not-at-top
  from rso_jax import models, partitioning, trainer  # pylint: disable=g-import-not-at-top
  model = models.PolicyModel(config)
  shapes = model.input_shapes(2, {"inputs": 8, "targets": 8})
  boxed = jax.eval_shape(lambda: model.get_initial_variables(jax.random.key(0), shapes))["params"]
  params = trainer.unbox(boxed)
  opt_state = jax.eval_shape(trainer.make_optimizer(optimizer, 1e-4).init, params)
  mesh = AbstractMesh(tuple(int(s) for s in mesh_shape), partitioning.MESH_AXES)
  shardings = trainer.state_shardings(boxed, opt_state, mesh)

  def total(tree, shards):
    return sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
               for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shards)))

  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  return count, total(params, shardings.params), total(opt_state, shardings.opt_state)


def activation_bytes(config, mesh_shape: Sequence[int], batch: int, inputs: int,
                     targets: int) -> float:
  """Estimated activation bytes per device of one preference step (see the module doc)."""
  data, fsdp, tensor = (int(s) for s in mesh_shape)
  b = batch / (data * fsdp)  # pairs per device
  e, f, h = config.emb_dim, config.mlp_dim / tensor, config.num_heads / tensor
  act = 2 if config.dtype == "bfloat16" else 4
  # A decoder-only network: the prompt through every layer once (its prefix), the responses
  # after it with self-attention only (~10·E per token, no cross-attention).
  decoder_only = hasattr(config, "num_kv_heads")
  enc_layers = config.num_layers if decoder_only else config.num_encoder_layers
  dec_layers = config.num_layers if decoder_only else config.num_decoder_layers
  enc = enc_layers * b * inputs * ((10 * e + 3 * f) + 2 * h * inputs)
  rows = 2 * b  # chosen and rejected
  dec = dec_layers * rows * targets * (((10 if decoder_only else 14) * e + 3 * f)
                                       + 2 * h * (targets + inputs))
  logits = rows * targets * (config.vocab_size / tensor) * 4 * 2  # float32 logits + softmax
  return (enc + dec) * act + logits


def table(sizes: Sequence[str], meshes: Sequence[Sequence[int]], optimizer: str, batch: int,
          inputs: int, targets: int) -> str:
  rows = ["| size | params | mesh (data, fsdp, tensor) | params / device | "
          f"{optimizer} state / device | activations / device (est.) | total / device |",
          "|---|---|---|---|---|---|---|"]
  for size in sizes:
    config = size_config(size)
    for mesh in meshes:
      n, p, o = device_bytes(config, mesh, optimizer)
      a = activation_bytes(config, mesh, batch, inputs, targets)
      rows.append(f"| {size} | {n / 1e6:,.0f} M | {tuple(mesh)} | {p / GIB:.2f} GiB | "
                  f"{o / GIB:.2f} GiB | {a / GIB:.1f} GiB | {(p + o + a) / GIB:.1f} GiB |")
  return "\n".join(rows)


def _meshes(text: str):
  out = []
  for part in text.split(";"):
    shape = tuple(int(x) for x in part.split(","))
    if len(shape) != 3 or min(shape) < 1:
      raise SystemExit(f"--meshes: {part!r} is not data,fsdp,tensor (positive)")
    out.append(shape)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="base,large,xl,xxl")
  p.add_argument("--meshes", default="1,1,1;1,8,1;1,4,2;1,32,1;1,64,4")
  p.add_argument("--optimizer", default="adamw")
  p.add_argument("--batch", type=int, default=64, help="preference pairs per step (global)")
  p.add_argument("--inputs", type=int, default=1024)
  p.add_argument("--targets", type=int, default=128)
  args = p.parse_args(argv)
  print(table(args.sizes.split(","), _meshes(args.meshes), args.optimizer, args.batch,
              args.inputs, args.targets))
  print(f"\n{args.batch} pairs per step, inputs {args.inputs} / responses {args.targets} "
        "tokens; params float32; activations estimated (launch/memory.py docstring).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
