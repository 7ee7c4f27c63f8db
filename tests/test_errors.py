"""rso_jax.errors: the one check of a user's numbers and the exit status of every command."""
import numpy as np
import pytest

from rso_jax import errors


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(1)])
def test_check_int_accepts_ints(value):
  errors.check_int("N", value)


@pytest.mark.parametrize("value", [0, -2, 1.0, "3", True, None, np.float32(2)])
def test_check_int_refuses_and_names_the_value(value):
  with pytest.raises(errors.ConfigError, match=r"^N=.* must be an int >= 1$"):
    errors.check_int("N", value)


def test_check_int_optional_and_minimum():
  errors.check_int("N", None, optional=True)
  errors.check_int("N", 0, 0)
  with pytest.raises(errors.ConfigError, match=r"N=-1 must be an int >= 0 or None"):
    errors.check_int("N", -1, 0, optional=True)


@pytest.mark.parametrize("value,strict,ok", [
    (0.0, False, True), (0.0, True, False), (1e-3, True, True), (np.float32(2), True, True),
    (float("nan"), False, False), (float("inf"), False, False), (-1, False, False),
    ("0.5", False, False), (True, False, False), (None, False, False)])
def test_check_number(value, strict, ok):
  if ok:
    errors.check_number("X", value, strict=strict)
  else:
    with pytest.raises(errors.ConfigError, match=r"^X=.* must be a finite number"):
      errors.check_number("X", value, strict=strict)


def test_check_number_hint_and_optional():
  errors.check_number("X", None, optional=True)
  with pytest.raises(errors.ConfigError, match=r"beta=-1 must be a finite number >= 0 \(paper"):
    errors.check_number("beta", -1, hint="paper: 0.5")


def _raise(e):
  def fn():
    raise e
  return fn


@pytest.mark.parametrize("error,status", [
    (errors.ConfigError("bad value\ncontext"), errors.EXIT_USER_ERROR),
    (errors.DataError("f.jsonl:3: no prompt"), errors.EXIT_USER_ERROR),
    (FileNotFoundError("no such file"), errors.EXIT_USER_ERROR),
    (errors.StageFailed("sft", 2, "gin: oops"), errors.EXIT_STAGE_FAILED),
    (errors.Preempted("preempted: saved"), errors.EXIT_PREEMPTED)])
def test_report_maps_each_outcome_to_its_exit_status(error, status, capsys, monkeypatch):
  monkeypatch.delenv("RSO_JAX_TRACEBACK", raising=False)
  assert errors.report("rso_jax.x", _raise(error)) == status
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith("rso_jax.x: ")
  assert errors.report("rso_jax.x", lambda: None) == errors.EXIT_OK


def test_report_reraises_a_bug_and_tracebacks_on_request(monkeypatch):
  monkeypatch.delenv("RSO_JAX_TRACEBACK", raising=False)
  with pytest.raises(KeyError):
    errors.report("rso_jax.x", _raise(KeyError("a bug")))
  monkeypatch.setenv("RSO_JAX_TRACEBACK", "1")
  with pytest.raises(errors.ConfigError):
    errors.report("rso_jax.x", _raise(errors.ConfigError("bad")))
