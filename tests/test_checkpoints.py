"""Checkpoints verified when read: damaged steps, malformed manifests, directories without params."""

import json
import logging
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import helpers
import pytest

from rso_jax import checkpoint_files
from rso_jax import errors
from rso_jax import checkpoints, export, models, trainer

LENGTHS = {"inputs": 8, "targets": 8}


@pytest.fixture(scope="module")
def params():
  return helpers.init_params(models.Seq2SeqModel(helpers.CFG), LENGTHS)


def _state(params, step):
  """A TrainState whose params are `params` shifted by `step` (each step's are different)."""
  p = jax.tree.map(lambda x: jnp.asarray(x) + step, params)
  return trainer.TrainState(step=jnp.asarray(step, jnp.int32), params=p, opt_state=p)


def _run(path, params, steps=(2, 4), async_save=True):
  """A run directory with trainer checkpoints at `steps` and its manifest."""
  ckpt = trainer.CheckpointManager(str(path), async_save=async_save)
  for s in steps:
    ckpt.save(_state(params, s), {"batches": s}, force=True)
  ckpt.close()
  checkpoints.write_manifest(str(path), helpers.manifest("seq2seq", LENGTHS))
  return str(path)


def _largest_file(directory):
  files = [os.path.join(r, n) for r, _, ns in os.walk(directory) for n in ns]
  return max(files, key=os.path.getsize)


def _truncate(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_intact_checkpoints_load_bit_for_bit(tmp_path, params):
  lone = helpers.save(tmp_path / "lone", models.Seq2SeqModel(helpers.CFG), LENGTHS, params)
  assert os.path.exists(os.path.join(lone, checkpoint_files.FILES_FILE))
  assert checkpoint_files.verify(lone, ("params",)) is None
  _equal(checkpoints.load_params(lone), params)
  for async_save in (True, False):
    run = _run(tmp_path / f"run_{async_save}", params, async_save=async_save)
    for s in (2, 4):
      step = checkpoints.step_path(run, s)
      listed = json.loads(open(os.path.join(step, checkpoint_files.FILES_FILE)).read())["files"]
      assert {f.split("/")[0] for f in listed} == {"params", "opt_state", "meta"}
      assert checkpoint_files.verify(step, trainer.CheckpointManager.ITEMS) is None
    _equal(checkpoints.load_params(run), _state(params, 4).params)


def test_a_normal_load_logs_no_warning(tmp_path, params, caplog):
  """orbax's "Metadata file does not exist" for a trainer step's params item is not shown."""
  run = _run(tmp_path / "run", params, steps=(2,))
  with caplog.at_level(logging.INFO):
    _equal(checkpoints.load_params(run), _state(params, 2).params)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
  # Only that one message is held back, and only while a checkpoint loads.
  absl_logger = logging.getLogger("absl")
  with caplog.at_level(logging.WARNING):
    absl_logger.warning("Metadata file does not exist: elsewhere")
  assert "elsewhere" in caplog.text


def test_step_being_written_is_not_read(tmp_path, params, monkeypatch):
  """A step whose asynchronous save has not finalized is not a step yet: the run loads the
  previous one, and the new one once orbax has renamed it into place."""
  run = _run(tmp_path / "run", params, steps=(2,))
  listing, release = threading.Event(), threading.Event()
  record = checkpoint_files.record_files

  def slow_record(directory, items):
    listing.set()
    assert release.wait(60)
    return record(directory, items)

  monkeypatch.setattr(checkpoint_files, "record_files", slow_record)
  ckpt = trainer.CheckpointManager(run)
  ckpt.save(_state(params, 4), {"batches": 4}, force=True)
  assert listing.wait(60)  # step 4's items are committed, its directory not yet renamed
  assert checkpoints.latest_step(run) == 2
  _equal(checkpoints.load_params(run), _state(params, 2).params)
  release.set()
  ckpt.close()
  assert checkpoints.latest_step(run) == 4
  assert checkpoint_files.verify(checkpoints.step_path(run, 4), ckpt.ITEMS) is None
  _equal(checkpoints.load_params(run), _state(params, 4).params)


@pytest.mark.parametrize("damage,needle", [
    ("truncate_data", "bytes, rso_files.json says"),
    ("remove_data", "is missing"),
    ("truncate_metadata", "params/_METADATA is not valid JSON"),
    ("truncate_unlisted", "OUT_OF_RANGE"),  # no file list: orbax's read error, caught
])
def test_damaged_step_is_one_line_naming_path_and_intact_steps(tmp_path, params, capsys,
                                                               damage, needle):
  run = _run(tmp_path / "run", params)
  step4 = checkpoints.step_path(run, 4)
  data = _largest_file(os.path.join(step4, "params"))
  if damage == "truncate_data":
    _truncate(data)
  elif damage == "remove_data":
    os.remove(data)
  elif damage == "truncate_metadata":
    _truncate(os.path.join(step4, "params", "_METADATA"))
  else:
    os.remove(os.path.join(step4, checkpoint_files.FILES_FILE))
    os.truncate(data, 0)
  with pytest.raises(errors.CheckpointError) as e:
    checkpoints.load_params(run)
  msg = str(e.value)
  assert "\n" not in msg
  for n in (f"checkpoint {step4} is damaged", needle,
            f"intact steps of {run}: {checkpoints.step_path(run, 2)}"):
    assert n in msg, msg
  _equal(checkpoints.load_params(checkpoints.step_path(run, 2)), _state(params, 2).params)
  assert export.main(["--checkpoint", run, "--out", str(tmp_path / "hf")]) == 2
  helpers.one_line(capsys.readouterr().err, "rso_jax.export: error:", step4, "is damaged",
            checkpoints.step_path(run, 2))
  assert os.path.isdir(step4) and not os.path.exists(tmp_path / "hf")


def test_damaged_lone_checkpoint_says_so(tmp_path, params):
  lone = helpers.save(tmp_path / "lone", models.Seq2SeqModel(helpers.CFG), LENGTHS, params)
  _truncate(_largest_file(os.path.join(lone, "params")))
  with pytest.raises(errors.CheckpointError,
                     match=f"^checkpoint {lone} is damaged: params/.* is \\d+ bytes"):
    checkpoints.load(lone)


def test_malformed_manifest_is_its_own_message(tmp_path, params, capsys):
  lone = helpers.save(tmp_path / "lone", models.Seq2SeqModel(helpers.CFG), LENGTHS, params)
  path = os.path.join(lone, checkpoints.MANIFEST_FILE)
  with open(path, "w") as f:
    f.write('{\n  "kind": "seq2seq",,\n}')
  want = f"{path} is not valid JSON: Expecting property name enclosed in double quotes at line 2"
  with pytest.raises(errors.CheckpointError, match=f"^{want} column 21$"):
    checkpoints.read_manifest(lone)
  assert checkpoints.main(["describe", lone]) == 2
  helpers.one_line(capsys.readouterr().err, "rso_jax.checkpoints: error:", want)
  with open(path, "wb") as f:
    f.write(b'{"kind": "\xff"}')
  with pytest.raises(errors.CheckpointError, match="invalid UTF-8 at byte 10"):
    checkpoints.read_manifest(lone)
  with open(path, "w") as f:
    f.write('{"kind": "seq2seq"}')
  with pytest.raises(errors.CheckpointError, match=f"^{path} is malformed: lacks 'network'"):
    checkpoints.read_manifest(lone)


def test_directory_without_params_is_its_own_message(tmp_path, capsys):
  empty = tmp_path / "empty"
  (empty / "checkpoints" / "notastep").mkdir(parents=True)
  want = f"no params checkpoint under {empty}: no params/ and no checkpoint steps"
  with pytest.raises(errors.CheckpointError, match=f"^{want}"):
    checkpoints.read_manifest(str(empty))
  assert checkpoints.main(["describe", str(empty)]) == 2
  err = helpers.one_line(capsys.readouterr().err, "rso_jax.checkpoints: error:", want)
  assert "add-manifest" not in err
  checkpoints.write_manifest(str(empty), helpers.manifest("seq2seq", LENGTHS))
  with pytest.raises(FileNotFoundError, match=want):
    checkpoints.load(str(empty))


def test_hf_tokenizer_vocabulary_spec_round_trip(tmp_path):
  """{"type": "hf_tokenizer", "path": ...}: written with copies of tokenizer.json and its
  config beside the manifest, read back from the copies when the original is gone, the same
  vocabulary by content."""
  import shutil
  from rso_jax.tasks import vocab as vocab_lib
  src = helpers.write_hf_tokenizer(tmp_path / "hf", ["owl", "cat"])
  vocab = vocab_lib.get_vocabulary(src)
  spec = checkpoints.vocabulary_spec(vocab)
  assert spec == {"type": "hf_tokenizer", "path": str(tmp_path / "hf" / "tokenizer.json")}
  ckpt = tmp_path / "ckpt"
  checkpoints.write_manifest(str(ckpt), helpers.manifest("seq2seq", LENGTHS, vocabulary=spec))
  for name in (checkpoints.HF_TOKENIZER_FILE, checkpoints.HF_TOKENIZER_CONFIG_FILE):
    assert (ckpt / name).read_bytes() == (tmp_path / "hf" / name).read_bytes()
  with open(ckpt / checkpoints.MANIFEST_FILE) as f:
    assert json.load(f)["vocabulary"] == dict(spec, file="tokenizer.json")
  shutil.rmtree(tmp_path / "hf")
  read = checkpoints.read_manifest(str(ckpt)).get_vocabulary()
  assert read.tokenizer_file == str(ckpt / "tokenizer.json")
  assert read.tokenizer_config_file == str(ckpt / "tokenizer_config.json")
  assert checkpoints.same_vocabulary(read, vocab) and read == vocab
  assert read.encode("owl cat") == vocab.encode("owl cat") and read.eos_id == vocab.eos_id
  # Carried along by a manifest written from the one read (its copy, not the gone original).
  again = tmp_path / "again"
  checkpoints.write_manifest(str(again), checkpoints.read_manifest(str(ckpt)))
  assert checkpoints.read_manifest(str(again)).get_vocabulary() == vocab
  # Another tokenizer, or the same tokenizer.json with another EOS, is another vocabulary.
  other = vocab_lib.get_vocabulary(helpers.write_hf_tokenizer(tmp_path / "o", ["owl", "dog"]))
  assert not checkpoints.same_vocabulary(read, other)
  eos = helpers.write_hf_tokenizer(tmp_path / "eos", ["owl", "cat"])
  with open(os.path.join(eos, "tokenizer_config.json")) as f:
    config = json.load(f)
  with open(os.path.join(eos, "tokenizer_config.json"), "w") as f:
    json.dump(dict(config, eos_token="<|im_end|>"), f)
  assert not checkpoints.same_vocabulary(read, vocab_lib.get_vocabulary(eos))
  assert not checkpoints.same_vocabulary(read, vocab_lib.get_vocabulary())
  # No copy and no original: one line naming both places.
  (ckpt / "tokenizer.json").unlink()
  with pytest.raises(errors.CheckpointError, match=r"the checkpoint's HF tokenizer '.*hf/"
                                                   r"tokenizer\.json' is missing"):
    checkpoints.read_manifest(str(ckpt)).get_vocabulary()
