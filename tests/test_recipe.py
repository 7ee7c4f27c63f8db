"""rso_jax.recipe: the paper's sampling recipe, its checks, and every stage's defaults."""
import inspect

import pytest

from rso_jax import decoding, evaluate, infer, inference, recipe, reward_quality, sample
from rso_jax import errors, sample_batch


def test_the_paper_recipe():
  """Sec. 5: N = 64 candidates at temperature 0.7, top-k 40; keep k = 8 at beta = 0.5."""
  p = recipe.PAPER
  assert (p.num_candidates, p.num_samples, p.temperature, p.top_k, p.top_p, p.beta) == (
      64, 8, 0.7, 40, None, 0.5)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(num_samples=9, num_candidates=8), "num_samples=9 > num_candidates=8"),
    (dict(num_candidates=0), "num_candidates=0 must be an int >= 1"),
    (dict(top_k=0), "top_k=0 must be an int >= 1 or None"),
    (dict(beta=-0.5), "beta=-0.5 must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature=nan must be a finite number >= 0"),
    (dict(top_p=0.0), "top_p=0.0 must be in (0, 1] or None"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1] or None")])
def test_a_bad_recipe_is_refused_naming_the_value(kwargs, needle):
  with pytest.raises(errors.ConfigError) as e:
    recipe.SamplingRecipe(**kwargs)
  assert needle in str(e.value)


@pytest.mark.parametrize("fn", [sample.run, sample_batch.process_batch, evaluate.evaluate_policy,
                                infer.infer, inference.Generator.generate, decoding.sample,
                                reward_quality.evaluate_reward_model])
def test_every_stage_that_draws_defaults_to_the_recipe(fn):
  params = inspect.signature(fn).parameters
  for field in ("num_candidates", "num_samples", "temperature", "top_k", "top_p", "beta"):
    if field in params:
      assert params[field].default == getattr(recipe.PAPER, field), (fn.__qualname__, field)
  assert "temperature" in params
