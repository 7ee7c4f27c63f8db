"""Progress lines: throttled, with rate and ETA, and a last line when the work is done."""

from rso_jax import progress


def test_progress_prints_rate_eta_and_a_last_line(monkeypatch):
  clock = iter([0.0, 1.0, 2.0, 30.0, 40.0])
  monkeypatch.setattr(progress.time, "time", lambda: next(clock))
  lines = []
  bar = progress.Progress("[collect] sampled", 100, every=10.0, print_fn=lines.append)  # t=0
  bar.update(10)   # t=1: within 10 s of the start, not printed
  bar.update(20)   # t=2: not printed
  bar.update(60)   # t=30: printed, 2 prompts/s, 40 left -> 20 s
  bar.update(100)  # t=40: the end is always printed
  assert lines == ["[collect] sampled 60/100 prompts | 2 prompts/s | ETA 0m20s",
                   "[collect] sampled 100/100 prompts | 2 prompts/s | done in 0m40s"]


def test_format_seconds():
  assert progress.format_seconds(65) == "1m05s"
  assert progress.format_seconds(3720) == "1h02m"
  assert progress.format_seconds(float("inf")) == "?"
