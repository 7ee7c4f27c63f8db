"""End to end: the main job's gin config through every stage at tiny sizes, with its run
directory on `gs://` (a local emulator, tests/gcs_emulator.py); then reuse and resume.
(tests/test_experiments.py runs the pipeline on local paths.)"""

import json
import os

import numpy as np
import pytest

from gcs_emulator import gcs  # noqa: F401  pylint: disable=unused-import  (a fixture)
from rso_jax import errors
from rso_jax import fs, pipeline, reward_quality, train
from rso_jax.tasks import embedded, synthetic

SMALL_NET = ["network.T5Config.emb_dim=32", "network.T5Config.mlp_dim=64",
             "network.T5Config.num_heads=2", "network.T5Config.head_dim=16",
             "network.T5Config.num_encoder_layers=1", "network.T5Config.num_decoder_layers=1"]


def _argv(tmp, *extra):
  """The main job at tiny sizes: stage lengths are the experiment's macros, stage details
  scoped bindings (sft/..., reward/...), exactly what a user would override."""
  return ["--gin_file=rso_hinge.gin", f'--gin.RUN_DIR="{tmp}"', "--gin.TRAIN_STEPS=3",
          "--gin.BATCH_SIZE=8", "--gin.SFT_STEPS=20", "--gin.REWARD_STEPS=6",
          "--gin.sft/train_lib.train.eval_period=0", "--gin.reward/train_lib.train.eval_period=0",
          "--gin.NUM_PROMPTS=16", "--gin.EVAL_PROMPTS=8", "--gin.COLLECT_PROMPTS=32",
          "--gin.sample.sample_configured.num_candidates=8",
          "--gin.sample.sample_configured.num_samples=4",
          "--gin.sample.sample_configured.batch_prompts=8",
          "--gin.sample.sample_configured.prompts_per_shard=8",
          "--gin.sample.sample_configured.keep_unfinished=True",
          *[f"--gin.{b}" for b in SMALL_NET], *extra]


def test_main_job_on_gcs_runs_every_stage_then_reuses_and_resumes(gcs, tmp_path, monkeypatch,  # noqa: F811
                                                                  capsys):
  monkeypatch.chdir(tmp_path)  # a path mangled to a local ./gs:/... folder would appear here
  run = f"{gcs}/runs/embedded"
  rc = train.main(_argv(run))
  out = capsys.readouterr().out
  assert rc == 0, out[-3000:]
  for d in ("sft", "reward_bt", "rso_hinge"):
    assert fs.exists(fs.join(run, d, "COMPLETED")), d
  # The collect stage: π_sft's samples, two per train prompt, rated by the simulated annotator;
  # the reward model trained on them (its manifest names the task).
  collected = [json.loads(l) for l in fs.read_text(fs.join(run, "collect", "pairs.jsonl"))
               .splitlines()]
  cstats = json.loads(fs.read_text(fs.join(run, "collect", "stats.json")))
  assert cstats["prompts"] == 32 and cstats["pairs"] == len(collected) > 0
  assert cstats["pairs"] + cstats["identical"] + cstats["empty"] == 32
  assert cstats["setting"]["policy_checkpoint"] == fs.join(run, "sft")
  prompts = synthetic.build_environment(embedded.registered_config()).prompts["train"][:32]
  assert {r["prompt"] for r in collected} <= set(prompts)
  assert all(r["chosen"] != r["rejected"] and r["chosen"].strip() for r in collected)
  rc_, rr_ = (synthetic.golden_rewards([r["prompt"] for r in collected],
                                       [r[k] for r in collected]) for k in ("chosen", "rejected"))
  untied = rc_ != rr_
  assert cstats["label_agreement_with_r_star"] == pytest.approx(float(np.mean(
      (rc_ > rr_)[untied])))
  assert "synthetic_onpolicy_pairs" in fs.read_text(fs.join(run, "reward_bt", "config.gin"))
  samples = fs.glob(fs.join(run, "samples", "*", "COMPLETED"))
  assert len(samples) == 1
  stats = json.loads(fs.read_text(fs.join(fs.dirname(samples[0]), "stats.json")))
  assert stats["pairs"] > 0 and 0 < stats["rejection/acceptance_rate"] <= 1
  report = json.loads(fs.read_text(fs.join(run, "eval_rso_hinge.json")))
  assert report["num_prompts"] == 8 and report["has_golden"]
  assert fs.exists(fs.join(run, "eval_plot.png"))
  assert "win" in out.lower() and "[sft]" in out and "[sample]" in out
  # Every stage longer than a few seconds says where it is: collection, evaluation.
  assert "[collect] sampled 32/32 prompts" in out and "done in" in out
  assert "[evaluate] rso_hinge: greedy decodes of π and π_sft graded in" in out
  # The reward stage's accuracy on π_sft's own samples, kept with the reward model.
  quality = json.loads(fs.read_text(fs.join(run, "reward_bt", "reward_quality.json")))
  assert quality["setting"]["num_prompts"] == 8 and quality["setting"]["num_samples"] == 8
  assert 0.0 <= quality["metrics"]["sft_samples/accuracy_golden"] <= 1.0
  assert "[reward] on π_sft's samples" in out and "accuracy vs r*" in out
  assert os.listdir(tmp_path) == []  # nothing written locally

  # Second run, two more policy steps: every stage is reused, the policy resumes from its
  # last checkpoint on gs:// and finishes; the reward model's quality record is read back.
  monkeypatch.setattr(reward_quality, "evaluate_reward_model",
                      lambda *a, **k: pytest.fail("reward_quality.json recomputed"))
  assert train.main(_argv(run, "--gin.TRAIN_STEPS=5")) == 0, capsys.readouterr().err
  out2 = capsys.readouterr().out
  assert "[sft] reusing" in out2 and "[reward] reusing" in out2 and "[sample] reusing" in out2
  assert "[collect] reusing" in out2
  assert "[reward] on π_sft's samples" in out2
  assert f"resumed from {run}/rso_hinge/checkpoints/3" in out2 and "step      5/5" in out2
  assert fs.read_text(fs.join(run, "rso_hinge", "COMPLETED")).strip() == "5"
  assert os.listdir(tmp_path) == []
  # Pairs collected with another setting are refused (the reward model was trained on them).
  assert train.main(_argv(run, "--gin.TRAIN_STEPS=5", "--gin.COLLECT_PROMPTS=24")) == 2
  err = capsys.readouterr().err
  assert "stage 'collect'" in err and "'num_prompts': 32" in err and "'num_prompts': 24" in err


def test_a_finished_model_with_other_settings_is_not_reused(tmp_path):
  """RUN_DIR/reward_bt of another BT_ARCHITECTURE is refused with both values named; a
  checkpoint that records no such setting (older) is not."""
  from helpers import CFG, manifest  # pylint: disable=g-import-not-at-top
  from rso_jax import checkpoints, cli, pipeline, reward_models  # pylint: disable=g-import-not-at-top
  lengths = {"inputs": 8, "targets": 8}
  path = str(tmp_path / "reward_bt")
  os.makedirs(path)
  old = reward_models.BradleyTerryRewardModel(CFG)
  checkpoints.write_manifest(path, manifest("bt_rm", lengths, settings=old.manifest_settings(),
                                            task="synthetic_dhf"))
  new = reward_models.BradleyTerryRewardModel(CFG, architecture="encoder_decoder")
  with pytest.raises(errors.ConfigError, match="architecture='encoder' vs 'encoder_decoder'"):
    pipeline.check_reusable("reward", path, new, "synthetic_dhf", lengths)
  pipeline.check_reusable("reward", path, old, "synthetic_dhf", lengths)
  checkpoints.write_manifest(path, manifest("bt_rm", lengths, settings={"pooling": "mean"},
                                            task="synthetic_dhf"))
  pipeline.check_reusable("reward", path, new, "synthetic_dhf", lengths)


def _report(proxy, kl):
  return {"results": {"greedy": {"vs_sft_targets/proxy": proxy, "vs_sft_targets/golden": 0.2}},
          "kl/mean": kl, "examples": ["dropped"]}


def test_select_checkpoint_is_the_best_proxy_win_rate_earliest_on_ties():
  assert pipeline.select_checkpoint({100: _report(0.6, 1), 200: _report(0.8, 2),
                                     300: _report(0.8, 3)}) == 200
  assert pipeline.select_checkpoint({100: {"results": {"greedy": {}}}}) is None


def test_every_checkpoint_is_evaluated_once_and_one_is_selected(tmp_path, monkeypatch, capsys):
  """Each kept step but the last (the main report) is evaluated once, written after each step;
  a rerun evaluates nothing; the selection is the best proxy win rate vs the SFT targets."""
  model_dir = tmp_path / "policy"
  for step in (100, 200, 300):
    (model_dir / "checkpoints" / str(step) / "params").mkdir(parents=True)
  proxy = {"100": 0.7, "200": 0.9}
  seen = []

  def fake(self, policy_path, name):
    assert name is None  # other steps write no eval_<name>.json / plot of their own
    seen.append(os.path.basename(policy_path))
    return _report(proxy[os.path.basename(policy_path)], 0.1)

  monkeypatch.setattr(pipeline.EvaluateStage, "_evaluate", fake)
  stage = pipeline.EvaluateStage(sft_checkpoint="s", reward_checkpoint="r",
                                 output_dir=str(tmp_path), name="p", prompts_task="t",
                                 every_checkpoint=True)
  record = stage.evaluate_checkpoints(str(model_dir), _report(0.8, 2.0))
  assert seen == ["100", "200"] and record["selected_step"] == 200
  on_disk = json.loads((tmp_path / "eval_p_checkpoints.json").read_text())
  assert on_disk == record and sorted(on_disk["steps"]) == ["100", "200", "300"]
  assert "examples" not in on_disk["steps"]["300"] and on_disk["steps"]["300"]["kl/mean"] == 2.0
  assert "selected checkpoint: step 200 of [100, 200, 300]" in capsys.readouterr().out
  seen.clear()
  assert stage.evaluate_checkpoints(str(model_dir), _report(0.8, 2.0)) == record
  assert seen == []


@pytest.mark.parametrize("kwargs,needle", [
    (dict(pairs_task="tldr_pairs", num_prompts=8), "'tldr_pairs' has no simulated rater"),
    (dict(pairs_task="synthetic_dhf", num_prompts=-1), "COLLECT_PROMPTS=-1 must be an int >= 0"),
    (dict(pairs_task="synthetic_dhf", num_prompts="8"), "COLLECT_PROMPTS='8' must be an int"),
])
def test_collect_stage_refusals(tmp_path, kwargs, needle):
  from rso_jax import cli  # pylint: disable=g-import-not-at-top
  stage = pipeline.CollectStage(policy_checkpoint=str(tmp_path / "sft"),
                                output_path=str(tmp_path / "collect" / "pairs.jsonl"), **kwargs)
  with pytest.raises(errors.ConfigError, match=needle):
    stage()
  assert not os.path.exists(tmp_path / "collect")
  off = pipeline.CollectStage(policy_checkpoint=str(tmp_path / "sft"), num_prompts=0,
                              output_path=str(tmp_path / "collect" / "pairs.jsonl"),
                              pairs_task="tldr_pairs")
  assert off() is None and not os.path.exists(tmp_path / "collect")


def test_a_judge_fraction_holds_its_prompts_out_of_every_other_stage():
  """JUDGE_PROMPT_FRACTION = 0.2 on the main job: the proxy, the sampling and `direct`'s pairs
  read the rest side of their tasks, the judge stage the judge side of the proxy's; 0 (the
  embedded default) changes no task and builds no judge."""
  from rso_jax import cli, sample  # pylint: disable=g-import-not-at-top
  cli.configure_gin(["rso_hinge.gin", "variants/direct.gin"],
                    ["RUN_DIR = '/tmp/r'", "JUDGE_PROMPT_FRACTION = 0.2"], [])
  reward = pipeline.stage_bindings(train.train, "reward")
  judge = pipeline.stage_bindings(train.train, "judge")
  assert reward["mixture_or_task_name"] == "synthetic_onpolicy_pairs.rest0.2"
  assert judge["mixture_or_task_name"] == "synthetic_onpolicy_pairs.judge0.2"
  assert judge["model_dir"] == "/tmp/r/judge" and judge["train_steps"] == reward["train_steps"]
  assert type(judge["model"]) is type(reward["model"])  # the experiment's reward model
  assert pipeline.stage_bindings(sample.sample_configured, "sample")["prompts_task"] == (
      "synthetic_prompts.rest0.2")
  policy = pipeline.stage_bindings(train.train, "")
  assert policy["mixture_or_task_name"] == "synthetic_dhf.rest0.2"  # direct: D_hf less them
  stages = {type(p).__name__: p for p in policy["prerequisites"]}
  assert stages["JudgeStage"].checkpoint == "/tmp/r/judge"
  (evaluation,) = policy["after_training"]
  assert evaluation.judge_checkpoint == "/tmp/r/judge"
  assert evaluation.judge_pairs == "synthetic_onpolicy_pairs.judge0.2"
  assert evaluation.policy_task == "synthetic_dhf.rest0.2"

  cli.configure_gin(["rso_hinge.gin"], ["RUN_DIR = '/tmp/r'"], [])
  assert pipeline.stage_bindings(train.train, "reward")["mixture_or_task_name"] == (
      "synthetic_onpolicy_pairs")
  assert pipeline.stage_bindings(sample.sample_configured, "sample")["prompts_task"] == (
      "synthetic_prompts")
  policy = pipeline.stage_bindings(train.train, "")
  assert {type(p).__name__: p for p in policy["prerequisites"]}["JudgeStage"]() is None
  assert policy["after_training"][0].judge_checkpoint is None


def test_the_evaluation_refuses_a_judge_whose_prompts_the_proxy_saw(tmp_path):
  """The split check reads the data as the stages are configured: with the proxy's split
  bypassed (its fraction 0), the judge's prompts are in the proxy's pairs -- a ConfigError
  naming them; with the split intact, the record counts every set."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from helpers import manifest  # pylint: disable=g-import-not-at-top
  from rso_jax import checkpoints, cli  # pylint: disable=g-import-not-at-top
  (tmp_path / "collect").mkdir()
  with open(tmp_path / "collect" / "pairs.jsonl", "w") as f:
    for i in range(60):
      f.write(json.dumps({"prompt": f"cow emu {i}", "chosen": "cow", "rejected": "emu"}) + "\n")
  spec = {"source": "synthetic_onpolicy_pairs", "fraction": 0.2, "salt": "judge"}
  for name, side in (("judge", "judge"), ("reward_bt", "rest")):
    os.makedirs(tmp_path / name)
    m = dataclasses.replace(manifest("bt_rm", {"inputs": 8, "targets": 9}),
                            data_split=dict(spec, side=side))
    checkpoints.write_manifest(str(tmp_path / name), m)

  def stage(*bindings):
    cli.configure_gin(["rso_hinge.gin"], [f"RUN_DIR = '{tmp_path}'",
                                          "JUDGE_PROMPT_FRACTION = 0.2", *bindings], [])
    (evaluation,) = pipeline.stage_bindings(train.train, "")["after_training"]
    return dataclasses.replace(evaluation, policy_task=None)

  record = stage().check_judge_split()
  assert record["judge_prompts"] > 0 and record["split"]["side"] == "judge"
  assert record["the proxy's training pairs"]["shared_with_judge"] == 0
  assert record["the sampled prompts"]["prompts"] == 512
  with pytest.raises(errors.ConfigError, match="not held out: .* the proxy's training pairs"):
    stage("reward_task/prompt_split.split_task.fraction = 0.0").check_judge_split()
