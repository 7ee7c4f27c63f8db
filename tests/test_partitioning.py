"""partitioning.py: sharded loss/gradients equal single-device ones; params really sharded."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from rso_jax import errors
from rso_jax import network
from rso_jax import partitioning

# Every sharded dim divides 8: heads 8, embed 64, mlp 128, vocab 384 (1+1 layers: compile time).
CFG = network.T5Config(vocab_size=384, emb_dim=64, num_heads=8, head_dim=8, mlp_dim=128,
                       num_encoder_layers=1, num_decoder_layers=1)
B, LE, LD = 8, 12, 10

# Tests check numerics, not speed: skip XLA's backend optimizations to halve compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def _abstract_variables():
  z = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda: network.Transformer(CFG).init(
      jax.random.key(0), z, z, z, enable_dropout=False))


def _random_params(seed: int = 0):
  """Init-shaped params drawn in NumPy (kernels ~ N(0, 1/fan_in)); skips compiling `init`."""
  rng = np.random.RandomState(seed)

  def draw(leaf):
    shape = leaf.shape
    if len(shape) == 1:  # norm scales
      return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    std = 1.0 if shape in ((CFG.vocab_size, CFG.emb_dim), (CFG.num_heads, 32)) else (
        shape[0] ** -0.5)
    return (std * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree.map(draw, nn.unbox(_abstract_variables()["params"]))


def _batch(seed: int = 0):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, CFG.vocab_size, (B, LE)).astype(np.int32)
  tgt = rng.randint(2, CFG.vocab_size, (B, LD)).astype(np.int32)
  for row in range(B):
    enc[row, rng.randint(3, LE + 1):] = 0
    tgt[row, rng.randint(2, LD + 1):] = 0
  dec = np.concatenate([np.zeros((B, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec,
          "decoder_target_tokens": tgt}


def _loss(params, batch):
  """Mean token cross-entropy over non-padding targets (scalar)."""
  logits = network.Transformer(CFG).apply(
      {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["decoder_target_tokens"], enable_dropout=False)
  tgt = batch["decoder_target_tokens"]
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
  mask = (tgt > 0).astype(jnp.float32)
  return jnp.sum(nll * mask) / jnp.sum(mask)


@pytest.fixture(scope="module")
def reference():
  params, batch = _random_params(), _batch()
  loss, grads = jax.jit(jax.value_and_grad(_loss), compiler_options=FAST_COMPILE)(params, batch)
  return params, batch, float(loss), jax.device_get(grads)


def _numpy_loss(params, batch):
  """Loss of the unsharded reference from its logits, cross-entropy in NumPy (float64)."""
  logits = np.asarray(jax.jit(lambda p, b: network.Transformer(CFG).apply(
      {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"],
      b["decoder_target_tokens"], enable_dropout=False), compiler_options=FAST_COMPILE)(
          params, batch), np.float64)
  tgt = batch["decoder_target_tokens"]
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  nll = lse - np.take_along_axis(logits, tgt[..., None], -1)[..., 0]
  return float((nll * (tgt > 0)).sum() / (tgt > 0).sum())


def test_reference_loss_is_cross_entropy(reference):
  params, batch, loss, _ = reference
  assert loss == pytest.approx(_numpy_loss(params, batch), rel=1e-5)


@needs_8
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 1, 8), (8, 1, 1), (2, 4, 1)])
def test_sharded_loss_and_grads_match_single_device(reference, mesh_shape):
  params, batch, ref_loss, ref_grads = reference
  mesh = partitioning.create_mesh(mesh_shape)
  assert dict(mesh.shape) == dict(zip(partitioning.MESH_AXES, mesh_shape))
  param_sh = partitioning.logical_shardings(_abstract_variables()["params"], mesh)
  assert jax.tree.structure(param_sh) == jax.tree.structure(params)
  batch_sh = {k: partitioning.batch_sharding(mesh, 2) for k in batch}
  with jax.set_mesh(mesh), nn.logical_axis_rules(partitioning.LOGICAL_RULES):
    sharded_params = partitioning.with_sharding(params, param_sh)
    sharded_batch = partitioning.shard_batch(batch, mesh)
    step = jax.jit(jax.value_and_grad(_loss), in_shardings=(param_sh, batch_sh),
                   out_shardings=(NamedSharding(mesh, P()), param_sh),
                   compiler_options=FAST_COMPILE)
    loss, grads = step(sharded_params, sharded_batch)

  assert float(loss) == pytest.approx(ref_loss, abs=1e-5)
  jax.tree.map(lambda g, r: np.testing.assert_allclose(np.asarray(g), r, atol=1e-5, rtol=0),
               grads, ref_grads)

  # The inputs really are split over devices, and the gradients come back sharded the same way.
  tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
  dp = mesh.shape["data"] * fsdp
  wi = sharded_params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]  # [embed, mlp]
  emb = sharded_params["token_embedder"]["embedding"]                  # [vocab, embed]
  query = sharded_params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]  # [E, H, D]
  assert wi.sharding.shard_shape(wi.shape) == (64 // fsdp, 128 // tensor)
  assert emb.sharding.shard_shape(emb.shape) == (384 // tensor, 64 // fsdp)
  assert query.sharding.shard_shape(query.shape) == (64 // fsdp, 8 // tensor, 8)
  assert {s.data.shape for s in wi.addressable_shards} == {(64 // fsdp, 128 // tensor)}
  g_wi = grads["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  assert g_wi.sharding.is_equivalent_to(wi.sharding, 2)
  enc = sharded_batch["encoder_input_tokens"]
  assert enc.sharding.shard_shape(enc.shape) == (B // dp, LE)
  if tensor > 1 or fsdp > 1:
    assert not wi.sharding.is_fully_replicated


@needs_8
def test_param_specs_follow_logical_rules():
  mesh = partitioning.create_mesh((2, 2, 2))
  sh = partitioning.logical_shardings(_abstract_variables()["params"], mesh)
  assert sh["token_embedder"]["embedding"].spec == P("tensor", "fsdp")
  assert sh["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"].spec == P("fsdp", "tensor")
  assert sh["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].spec == P("tensor", "fsdp")
  assert sh["decoder"]["layers_0"]["self_attention"]["out"]["kernel"].spec == P(
      "tensor", None, "fsdp")
  assert sh["decoder"]["logits_dense"]["kernel"].spec == P("fsdp", "tensor")
  assert sh["encoder"]["encoder_norm"]["scale"].spec == P("fsdp")
  # On (8, 1, 1) nothing is model-sharded: size-1 mesh axes are dropped from the specs.
  sh8 = partitioning.logical_shardings(_abstract_variables()["params"],
                                       partitioning.create_mesh((8, 1, 1)))
  assert sh8["token_embedder"]["embedding"].spec == P(None, None)


def test_logical_to_spec():
  assert partitioning.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert partitioning.logical_to_spec(("activation_batch", "activation_length")) == P(
      ("data", "fsdp"), None)
  assert partitioning.logical_to_spec((None, "kv")) == P(None, None)
  # A mesh axis is used once per array: the second "tensor" dim is replicated.
  assert partitioning.logical_to_spec(("heads", "mlp")) == P("tensor", None)


@needs_8
def test_indivisible_dims_are_replicated():
  mesh = partitioning.create_mesh((1, 1, 8))
  # 6 heads do not split over 8 tensor shards: that dim is replicated, nothing fails.
  assert partitioning.logical_to_spec(("embed", "heads", "kv"), shape=(64, 6, 8),
                                      mesh=mesh) == P(None, None, None)
  assert partitioning.logical_to_spec(("embed", "mlp"), shape=(64, 128), mesh=mesh) == P(
      None, "tensor")


@needs_8
@pytest.mark.parametrize("shape,resolved", [
    ((-1, 1, 1), (8, 1, 1)), ((2, -1, 1), (2, 4, 1)), ((1, 2, -1), (1, 2, 4)),
    ((2, 2, 2), (2, 2, 2)),
])
def test_fill_with_minus_one(shape, resolved):
  assert partitioning.resolve_mesh_shape(shape, 8) == resolved
  mesh = partitioning.create_mesh(shape)
  assert tuple(mesh.shape[a] for a in partitioning.MESH_AXES) == resolved
  assert mesh.devices.size == 8


@pytest.mark.parametrize("shape,match", [
    ((3, 1, 1), r"\(3, 1, 1\)"), ((-1, 3, 1), r"\(-1, 3, 1\)"), ((2, 2, 1), r"\(2, 2, 1\)"),
    ((-1, -1, 1), "at most one"), ((0, 8, 1), "positive"), ((8, 1), "3 entries"),
])
def test_bad_mesh_shapes_are_refused(shape, match):
  with pytest.raises(ValueError, match=match):
    partitioning.resolve_mesh_shape(shape, 8)


@needs_8
def test_create_mesh_refuses_bad_shape():
  with pytest.raises(ValueError, match="does not divide"):
    partitioning.create_mesh((-1, 3, 1))
  with pytest.raises(ValueError, match="uses 6 devices"):
    partitioning.create_mesh((3, 2, 1))


@needs_8
@pytest.mark.parametrize("shape,needle", [
    ("(3, 1, 1)", "MESH_SHAPE=(3, 1, 1) uses 3 devices but 8 are available"),
    ("(0, 1, 1)", "MESH_SHAPE=(0, 1, 1): entries must be positive or -1 (8 devices)"),
    ("(-1, -1, 1)", "MESH_SHAPE=(-1, -1, 1): at most one entry may be -1 (8 devices)"),
    ("(-1, 3, 1)", "MESH_SHAPE=(-1, 3, 1) does not divide the 8 devices"),
    ("(8, 1)", "MESH_SHAPE=(8, 1) must have 3 entries"),
    ("('a', 1, 1)", "MESH_SHAPE=('a', 1, 1) must be 3 ints")])
def test_a_mesh_that_does_not_fit_is_one_line_in_every_cli(tmp_path, capsys, shape, needle):
  """An impossible MESH_SHAPE: a MeshError (ValueError) naming MESH_SHAPE, the value and the
  device count; every CLI reports it as one line, exit 2, with nothing created."""
  from rso_jax import infer, train  # pylint: disable=g-import-not-at-top
  with pytest.raises(errors.MeshError, match=re.escape(needle)):
    partitioning.create_mesh(eval(shape))  # pylint: disable=eval-used
  model_dir = tmp_path / "sft"
  assert train.main(["--gin_file=stages/sft.gin", f'--gin.MODEL_DIR="{model_dir}"',
                     f"--gin.MESH_SHAPE={shape}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"rso_jax.train: error: {needle}"), err
  assert not model_dir.exists()
  prompts = tmp_path / "p.jsonl"
  prompts.write_text('{"prompt": "owl"}\n')
  assert infer.main(["--gin_file=stages/infer.gin", f'--gin.CHECKPOINT="{tmp_path / "ckpt"}"',
                     f'--gin.PROMPTS_FILE="{prompts}"', f'--gin.OUTPUT="{tmp_path / "o.jsonl"}"',
                     f"--gin.infer.infer_configured.mesh_shape={shape}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"rso_jax.infer: error: {needle}"), err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


@needs_8
def test_batch_size_check():
  mesh = partitioning.create_mesh((2, 2, 2))
  partitioning.check_batch_size(8, mesh)
  with pytest.raises(ValueError, match="BATCH_SIZE=6"):
    partitioning.check_batch_size(6, mesh)
