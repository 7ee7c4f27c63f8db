"""The filesystem layer (rso_jax.fs) on local paths and on `gs://`, offline (the `gcs` fixture:
tests/gcs_emulator.py, a local GCS emulator every process of a run reaches)."""

import json
import os
import subprocess
import sys

import pytest

import helpers
from gcs_emulator import gcs  # noqa: F401  pylint: disable=unused-import  (a fixture)
from rso_jax import fs
from rso_jax import runs

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------ fs itself


def test_path_strings():
  assert fs.is_url("gs://b/x") and not fs.is_url("/tmp/x") and not fs.is_url("rel/x")
  assert fs.scheme("gs://b/x") == "gs" and fs.scheme("/x") == ""
  assert fs.abspath("gs://b/run/") == "gs://b/run"  # never ./gs:/b/run
  assert fs.abspath("gs://") == "gs://"
  assert fs.abspath("rel") == os.path.join(os.getcwd(), "rel")
  assert fs.abspath("~/x") == os.path.expanduser("~/x")
  assert fs.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  assert fs.join("/a", "b") == "/a/b"
  assert fs.dirname("gs://b/run/x.json") == "gs://b/run"
  assert fs.dirname("gs://b/run/sub/") == "gs://b/run"
  assert fs.basename("gs://b/run/sub/") == "sub"


def test_check_disjoint(tmp_path):
  run = tmp_path / "runs" / "run"
  run.mkdir(parents=True)
  (tmp_path / "link").symlink_to(run)
  ok = [tmp_path / "runs" / "run2", tmp_path / "other", tmp_path / "runs" / "ru"]
  for out in ok:  # siblings, a name sharing a prefix
    fs.check_disjoint(str(out), {"--checkpoint": str(run), "unset": None})
  for out, how in [(run, "is the same path as"), (str(run) + "/", "is the same path as"),
                   (tmp_path / "link", "is the same path as"), (tmp_path / "runs", "contains"),
                   (tmp_path, "contains"), (run / "hf", "lies inside"),
                   (tmp_path / "link" / "x", "lies inside")]:
    with pytest.raises(fs.OverlappingPaths) as e:
      fs.check_disjoint(str(out), {"--checkpoint": str(run)})
    assert isinstance(e.value, FileExistsError)
    assert f"--out {str(out)!r} {how} --checkpoint {str(run)!r}" in str(e.value), e.value
  # A new file beside a checkpoint is fine where asked for; an existing one is not.
  fs.check_disjoint(str(run / "out.jsonl"), {"CHECKPOINT": str(run)}, "OUTPUT",
                    new_inside_ok=True)
  (run / "rso_manifest.json").write_text("{}")
  with pytest.raises(fs.OverlappingPaths, match="OUTPUT .* lies inside CHECKPOINT"):
    fs.check_disjoint(str(run / "rso_manifest.json"), {"CHECKPOINT": str(run)}, "OUTPUT",
                      new_inside_ok=True)
  # URLs: by prefix on '/' boundaries; a local path and a URL never overlap.
  fs.check_disjoint("gs://b/runs/run2", {"x": "gs://b/runs/run"})
  fs.check_disjoint(str(run), {"x": "gs://b" + str(run)})
  for out in ("gs://b/runs/run/", "gs://b/runs", "gs://b/runs/run/hf"):
    with pytest.raises(fs.OverlappingPaths):
      fs.check_disjoint(out, {"x": "gs://b/runs/run"})


def _exercise(root):
  """The fs functions on a fresh directory `root` (local or gs://)."""
  run = fs.join(root, "run [1]")  # glob metacharacters in the directory name
  assert not fs.exists(run) and not fs.isdir(run)
  fs.makedirs(fs.join(run, "sub", "deeper"))
  fs.makedirs(fs.join(run, "sub"))  # exists: no error
  assert fs.isdir(run) and fs.isdir(fs.join(run, "sub"))
  fs.atomic_write_text(fs.join(run, "a.json"), json.dumps({"x": 1}))
  fs.atomic_write_bytes(fs.join(run, "b.bin"), bytes(range(256)) * 1000)
  assert json.loads(fs.read_text(fs.join(run, "a.json"))) == {"x": 1}
  assert fs.read_bytes(fs.join(run, "b.bin")) == bytes(range(256)) * 1000
  assert fs.isfile(fs.join(run, "a.json")) and not fs.isfile(fs.join(run, "sub"))
  assert fs.listdir(run) == ["a.json", "b.bin", "sub"]  # no temporary files left
  with fs.open(fs.join(run, "log.jsonl"), "w") as f:
    f.write("1\n")
  with fs.open(fs.join(run, "log.jsonl"), "a") as f:
    f.write("2\n")
  with fs.open(fs.join(run, "log.jsonl")) as f:
    assert [l.strip() for l in f] == ["1", "2"]
  assert fs.glob_in(run, "*.json") == [fs.join(run, "a.json")]
  assert fs.glob_in(fs.join(root, "absent"), "*") == []
  assert fs.glob(fs.join(fs.join(root, "run*"), "*.bin")) == [fs.join(run, "b.bin")]
  fs.copy(fs.join(run, "a.json"), fs.join(run, "sub", "c.json"))
  fs.rename(fs.join(run, "sub", "c.json"), fs.join(run, "sub", "d.json"))
  assert fs.listdir(fs.join(run, "sub")) == ["d.json", "deeper"]
  with pytest.raises(FileExistsError):
    fs.rename(fs.join(run, "a.json"), fs.join(run, "sub", "d.json"), overwrite=False)
  fs.copytree(fs.join(run, "sub"), fs.join(root, "copy"))
  assert fs.read_text(fs.join(root, "copy", "d.json")) == json.dumps({"x": 1})
  walked = {fs.basename(top) if top != run else ".": (sorted(d), sorted(f))
            for top, d, f in fs.walk(run)}
  assert walked["."] == (["sub"], ["a.json", "b.bin", "log.jsonl"])
  assert walked["sub"] == (["deeper"], ["d.json"])
  with pytest.raises(FileNotFoundError):
    fs.read_text(fs.join(run, "missing.json"))
  with pytest.raises(FileNotFoundError):
    fs.open(fs.join(run, "missing.json"))
  fs.remove(fs.join(run, "a.json"))
  assert not fs.exists(fs.join(run, "a.json"))
  fs.rmtree(run)
  fs.rmtree(run)  # absent: no error
  assert not fs.exists(fs.join(run, "b.bin"))


def test_local(tmp_path):
  _exercise(str(tmp_path))
  assert not os.path.exists("gs:")


def test_gcs(gcs):
  _exercise(fs.join(gcs, "fs_test"))
  assert not os.path.exists("gs:")  # nothing landed in a local ./gs:/ folder


def test_gcs_is_shared_with_subprocesses(gcs):
  path = fs.join(gcs, "shared", "from_child.txt")
  code = f"from rso_jax import fs; fs.atomic_write_text({path!r}, 'child')"
  subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120,
                 cwd=_REPO)
  assert fs.read_text(path) == "child"


# ------------------------------------------------------------------------------ a run on gs://


def test_run_dir_on_gcs_completes_resumes_and_loads(gcs):
  """train -> manifest + checkpoints on gs://; a longer second call resumes from them; the
  checkpoint loads (checkpoints.load, inference.load); the sampling stage writes there."""
  _train = helpers.train_reverse
  from rso_jax import checkpoints, inference, sample  # pylint: disable=import-outside-toplevel

  model_dir = fs.join(gcs, "runs", "sft")
  _train(model_dir, 2, checkpoint_period=2)
  assert not os.path.exists("gs:")
  assert fs.exists(fs.join(model_dir, checkpoints.MANIFEST_FILE))
  assert checkpoints.latest_step(model_dir) == 2
  assert sorted(_logged_steps(model_dir)) == [1, 2]

  _train(model_dir, 3, checkpoint_period=2)  # resumes at step 2, trains one more
  assert checkpoints.latest_step(model_dir) == 3
  assert sorted(_logged_steps(model_dir)) == [1, 2, 3]  # step 1..2 not logged twice

  manifest, params = checkpoints.load(model_dir)
  assert manifest.kind == "seq2seq"
  assert checkpoints.resolve_params_path(model_dir) == fs.join(model_dir, "checkpoints", "3")
  gen = inference.load(model_dir, expect=checkpoints.GENERATIVE_KINDS,
                       feature_lengths={"inputs": 16, "targets": 8}, batch_size=2)
  assert gen.manifest.kind == "seq2seq"  # (sample.run below decodes with it)
  assert jax_tree_size(params) > 0

  samples = fs.join(gcs, "runs", "samples")
  summary = sample.run(policy_checkpoint=model_dir, reward_checkpoint=None, output_dir=samples,
                       scorer=_LengthScorer(), prompts_task="synthetic_prompts", split="validation", max_prompts=4,
                       prompts_per_shard=2, batch_prompts=2, num_candidates=4, num_samples=2,
                       max_decode_length=8, input_length=32, keep_unfinished=True,
                       mesh_shape=(-1, 1, 1), progress=False)
  assert summary["prompts"] == 4
  names = fs.listdir(samples)
  assert {"pairs-00000-of-00002.tfrecord", "pairs-00001-of-00002.tfrecord", "manifest.json",
          "stats.json", "COMPLETED", "stats-00000.json", "stats-00001.json"} <= set(names), names
  assert not [n for n in names if ".tmp." in n]
  assert runs.is_complete(samples)
  assert json.loads(fs.read_text(fs.join(samples, "manifest.json")))["policy_checkpoint"] \
      == model_dir
  assert not os.path.exists("gs:")


def _logged_steps(model_dir):
  rows = [json.loads(l) for l in fs.read_text(fs.join(model_dir, "metrics.jsonl")).splitlines()]
  return [r["step"] for r in rows if "loss" in r]


def jax_tree_size(tree):
  import jax  # pylint: disable=import-outside-toplevel
  return sum(x.size for x in jax.tree.leaves(tree))


class _LengthScorer:
  kind = "bt_rm"
  stats = {"contexts_truncated": 0, "responses_too_long": 0}

  def reward(self, prompts, responses, baselines=None, valid=None):
    import numpy as np  # pylint: disable=import-outside-toplevel
    return np.array([[float(len(y)) for y in row] for row in responses], np.float32)

  def prefer(self, prompts, y1, y2):
    import numpy as np  # pylint: disable=import-outside-toplevel
    a = np.array([len(y) for y in y1], np.float32)
    b = np.array([len(y) for y in y2], np.float32)
    return 1.0 / (1.0 + np.exp(-(a - b)))


