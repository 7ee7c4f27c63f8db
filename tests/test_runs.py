"""rso_jax.runs: run-directory conventions and what a stopped run does."""
import signal

import pytest

from rso_jax import errors, runs


def test_complete_marker_round_trip(tmp_path):
  d = str(tmp_path / "stage")
  assert not runs.is_complete(d)
  (tmp_path / "stage").mkdir()
  runs.mark_complete(d, "7\n")
  assert runs.is_complete(d) and (tmp_path / "stage" / runs.COMPLETED).read_text() == "7\n"


def test_run_path_needs_a_run_dir(tmp_path):
  assert runs.run_path(str(tmp_path), "sft") == str(tmp_path / "sft")
  with pytest.raises(ValueError, match="RUN_DIR is empty"):
    runs.run_path("", "sft")


def test_stop_signals_are_handled_in_the_block_and_restored_after():
  before = {s: signal.getsignal(s) for s in runs.STOP_SIGNALS}
  seen = []
  with runs.on_stop_signals(lambda signum, frame: seen.append(signum)):
    signal.raise_signal(signal.SIGTERM)
    signal.raise_signal(signal.SIGINT)
  assert seen == [signal.SIGTERM, signal.SIGINT]
  assert {s: signal.getsignal(s) for s in runs.STOP_SIGNALS} == before


def test_preemption_flag_is_set_by_sigterm():
  with runs.PreemptionFlag() as flag:
    assert not flag.reached(1)
    signal.raise_signal(signal.SIGTERM)
    assert flag.reached(2) and flag.signal == signal.SIGTERM


def test_removed_on_failure_keeps_what_existed(tmp_path):
  new = tmp_path / "a" / "b"
  with pytest.raises(errors.ConfigError):
    with runs.removed_on_failure(str(new)):
      new.mkdir(parents=True)
      raise errors.ConfigError("bad")
  assert not (tmp_path / "a").exists()  # it and the parent it created are gone
  with pytest.raises(errors.ConfigError):
    with runs.removed_on_failure(str(tmp_path)):
      raise errors.ConfigError("bad")
  assert tmp_path.exists()
