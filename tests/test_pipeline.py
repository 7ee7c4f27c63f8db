"""End to end: the main job's gin config through every stage at tiny sizes, then reuse."""

import json
import os

from rso_jax import train

SMALL_NET = ["network.T5Config.emb_dim=32", "network.T5Config.mlp_dim=64",
             "network.T5Config.num_heads=2", "network.T5Config.head_dim=16",
             "network.T5Config.num_encoder_layers=1", "network.T5Config.num_decoder_layers=1"]


def _argv(tmp):
  net = [f"--gin.{b}" for b in SMALL_NET]
  stage = lambda extra: json.dumps(SMALL_NET + ["BATCH_SIZE=8", "EVAL_PERIOD=0"] + extra)
  sample = json.dumps(["NUM_PROMPTS=16", "sample.sample_configured.num_candidates=8",
                       "sample.sample_configured.num_samples=4",
                       "sample.sample_configured.batch_prompts=8",
                       "sample.sample_configured.prompts_per_shard=8",
                       "sample.sample_configured.keep_unfinished=True"])
  return ["--gin_file=rso_hinge.gin", f'--gin.RUN_DIR="{tmp}"',
          f'--gin.MODEL_DIR="{tmp}/policy"', f'--gin.SFT_CHECKPOINT="{tmp}/sft"',
          f'--gin.REWARD_CHECKPOINT="{tmp}/rm"', "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=8",
          f"--gin.sft/pipeline.TrainStage.bindings={stage(['TRAIN_STEPS=20'])}",
          f"--gin.rm/pipeline.TrainStage.bindings={stage(['TRAIN_STEPS=6'])}",
          f"--gin.pipeline.SampleStage.bindings={sample}",
          "--gin.pipeline.EvaluateStage.num_prompts=8", *net]


def test_main_job_runs_every_stage_then_reuses_them(tmp_path, capsys):
  assert train.main(_argv(tmp_path)) == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  for d in ("sft", "rm", "policy"):
    assert os.path.exists(tmp_path / d / "COMPLETED"), d
  samples = list((tmp_path / "samples").iterdir())
  assert len(samples) == 1 and (samples[0] / "COMPLETED").exists()
  stats = json.loads((samples[0] / "stats.json").read_text())
  assert stats["pairs"] > 0 and 0 < stats["rejection/acceptance_rate"] <= 1
  report = json.loads((tmp_path / "eval_rso_hinge.json").read_text())
  assert (tmp_path / "eval_plot.png").exists()
  assert "win" in out.lower() and "[sft]" in out and "[sample]" in out
  assert report  # the evaluation table was produced

  # Second run: every artifact is reused, nothing retrained or resampled.
  assert train.main(_argv(tmp_path)) == 0, capsys.readouterr().err
  out2 = capsys.readouterr().out
  assert "[sft] reusing" in out2 and "[reward] reusing" in out2 and "[sample] reusing" in out2
  assert "step " not in out2  # the policy run was complete: no training step
