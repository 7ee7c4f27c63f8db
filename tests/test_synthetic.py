"""The synthetic environment: determinism, golden reward, Bradley-Terry labels, data quality."""
import itertools
import math

import numpy as np
import pytest

from rso_jax.tasks import golden
from rso_jax.tasks import synthetic as syn

SMALL = dict(num_train_prompts=300, num_validation_prompts=40, num_test_prompts=40)


def _fresh(config):
  return syn.build_environment.__wrapped__(config)  # Bypass the cache: a real rebuild.


def _oracle_reward(prompt, response, lam=0.1):
  """r* from its definition, with LCS by brute force over subsequences of the response."""
  kw, words = prompt.split(), response.split()
  best = 0
  for size in range(len(words), 0, -1):
    for idx in itertools.combinations(range(len(words)), size):
      sub = [words[i] for i in idx]
      it = iter(kw)
      if all(w in it for w in sub):  # `sub` is a subsequence of kw.
        best = size
        break
    if best:
      break
  return best / len(kw) - lam * (len(words) - best)


def test_same_seed_same_data_different_seed_different_data():
  a = _fresh(syn.EnvConfig(seed=3, **SMALL))
  b = _fresh(syn.EnvConfig(seed=3, **SMALL))
  c = _fresh(syn.EnvConfig(seed=4, **SMALL))
  assert a.prompts == b.prompts and a.sft == b.sft and a.dhf == b.dhf
  assert a.prompts["train"] != c.prompts["train"]
  assert a.dhf["train"] != c.dhf["train"]


def test_held_out_prompts_disjoint_and_stable_under_train_size():
  a = _fresh(syn.EnvConfig(seed=1, **SMALL))
  big = _fresh(syn.EnvConfig(seed=1, **{**SMALL, "num_train_prompts": 600}))
  tr, va, te = (set(a.prompts[s]) for s in ("train", "validation", "test"))
  assert not (tr & va) and not (tr & te) and not (va & te)
  assert len(tr) == 300 and len(va) == 40
  assert big.prompts["validation"] == a.prompts["validation"]
  assert big.prompts["train"][:300] == a.prompts["train"]
  assert big.sft["train"][:300] == a.sft["train"]  # Per-prompt streams.
  assert big.dhf["train"][:600] == a.dhf["train"]


@pytest.mark.parametrize("prompt,response,expected", [
    ("cat dog fox", "cat dog fox", 1.0),
    ("cat dog fox", "", 0.0),
    ("cat dog fox", "cat fox", 2 / 3),
    ("cat dog fox", "dog cat fox", 2 / 3 - 0.1),  # Order matters: LCS 2, one wasted word.
    ("cat dog", "cat dog cat dog", 1.0 - 0.2),  # Padding/repeats cost 0.1 per word.
    ("cat dog", "owl", -0.1),
    ("cat dog fox hen", "cat owl dog", 0.5 - 0.1),
    ("  cat   dog ", "cat dog\n", 1.0),
    ("cat dog", "catdog", -0.1),
])
def test_golden_reward_hand_written(prompt, response, expected):
  assert syn.golden_reward(prompt, response) == pytest.approx(expected)
  assert syn.golden_reward(prompt.encode(), response.encode()) == pytest.approx(expected)


def test_golden_reward_matches_brute_force_oracle_and_best_is_max():
  rng = np.random.default_rng(0)
  for _ in range(300):
    p = syn.sample_prompt(rng)
    ys = [syn.sft_demo(p, rng), syn.behaviour_response(p, rng),
          " ".join(rng.permutation(p.split()).tolist() + ["owl"])]
    for y in ys:
      assert syn.golden_reward(p, y) == pytest.approx(_oracle_reward(p, y))
      assert syn.golden_reward(p, y) <= syn.golden_reward(p, syn.best_response(p))
    assert syn.golden_reward(p, syn.best_response(p)) == 1.0


def test_golden_rewards_batched_and_errors():
  prompts = ["cat dog", "owl ram fox"]
  r = syn.golden_rewards(prompts, ["cat dog", "owl fox"])
  assert r.dtype == np.float32 and r.shape == (2,)
  np.testing.assert_allclose(r, [1.0, 2 / 3], rtol=1e-6)
  r2 = syn.golden_rewards(prompts, [["cat", "dog cat"], ["owl", b"owl ram fox"]])
  np.testing.assert_allclose(r2, [[0.5, 0.4], [1 / 3, 1.0]], rtol=1e-6)
  with pytest.raises(ValueError, match="2 prompts"):
    syn.golden_rewards(prompts, ["cat"])
  with pytest.raises(ValueError, match="no keywords"):
    syn.golden_reward("   ", "cat")
  with pytest.raises(ValueError, match="must be str or bytes"):
    syn.golden_reward("cat", 3)


@pytest.mark.parametrize("delta", [0.0, 0.1, 0.25, -0.3])
def test_bt_label_rate_matches_sigmoid(delta):
  # n = 20,000 draws: the rate must lie within 4 binomial standard deviations of
  # sigmoid(delta / tau) (two-sided chance of a false failure ~6e-5; the seed is fixed).
  tau, n = syn.BT_TEMPERATURE, 20_000
  rng = np.random.default_rng(7)
  rate = np.mean([syn.bt_label(0.5 + delta, 0.5, rng, tau) for _ in range(n)])
  p = 1.0 / (1.0 + math.exp(-delta / tau))
  assert abs(rate - p) <= 4 * math.sqrt(p * (1 - p) / n)


def test_dhf_labels_follow_bradley_terry_on_large_sample():
  # 16,000 pairs. y1, y2 are exchangeable draws, so for each |r*1 - r*2| = d the chosen
  # response has the higher r* with probability sigmoid(d / tau). Per bucket with n >= 300:
  # |rate - p| <= 4 sqrt(p(1-p)/n); overall: the sum of (1[higher chosen] - p) over untied
  # pairs has |z| <= 4.
  data = syn.build_environment(syn.EnvConfig(seed=11, num_train_prompts=8000,
                                             num_validation_prompts=8, num_test_prompts=8))
  pairs = data.dhf["train"]
  assert len(pairs) == 16_000
  d = np.array([abs(p.chosen_reward - p.rejected_reward) for p in pairs])
  higher = np.array([p.chosen_reward > p.rejected_reward for p in pairs])
  for p in pairs[:200]:
    assert p.chosen_reward == pytest.approx(syn.golden_reward(p.prompt, p.chosen))
    assert p.chosen != p.rejected
  untied = d > 1e-9
  prob = 1.0 / (1.0 + np.exp(-d / syn.BT_TEMPERATURE))
  buckets = np.round(d, 6)
  checked = 0
  for value in np.unique(buckets[untied]):
    m = buckets == value
    n = int(m.sum())
    if n < 300:
      continue
    p = float(prob[m][0])
    assert abs(higher[m].mean() - p) <= 4 * math.sqrt(p * (1 - p) / n), (value, n)
    checked += 1
  assert checked >= 5
  z = (higher[untied] - prob[untied]).sum() / math.sqrt((prob * (1 - prob))[untied].sum())
  assert abs(z) <= 4


def test_quality_ordering_and_hackable_length_signal():
  data = syn.build_environment(syn.EnvConfig(seed=0, num_train_prompts=2000,
                                             num_validation_prompts=8, num_test_prompts=8))
  s = syn.environment_stats(data)
  assert s["best_reward"] == 1.0
  assert 0.5 < s["sft_reward"] < 0.8  # Middling demonstrations.
  assert s["dhf_reward"] < s["sft_reward"] - 0.15  # A different, worse policy.
  assert 0.75 < s["dhf_agreement"] < 0.95  # Noisy raters.
  assert s["longer_chosen_rate"] > 0.65  # "Longer is better" is learnable from D_hf ...
  # ... yet r* never rewards words beyond the keywords: padding the best response hurts.
  p = data.prompts["train"][0]
  assert syn.golden_reward(p, syn.best_response(p) + " owl owl") < 1.0
  assert "| mean r*, SFT demonstrations |" in syn.format_stats_table(s)


def test_string_sizes_fit_feature_length_32():
  data = _fresh(syn.EnvConfig(seed=5, **SMALL))
  texts = list(itertools.chain(*data.prompts.values(), *data.sft.values()))
  texts += [y for split in data.dhf.values() for p in split for y in (p.chosen, p.rejected)]
  assert max(len(t.encode()) for t in texts) <= 24
  assert all(t.strip() for t in texts)  # Never an empty prompt or response.


def test_dhf_of_several_policies():
  """A D_hf of the behaviour policy and the SFT annotator: its mean r* lies strictly between the
  single-policy ones; one policy draws nothing from the source stream (the first pipeline's
  pairs, redrawn by hand below)."""
  sizes = dict(seed=2, num_train_prompts=1500, num_validation_prompts=8, num_test_prompts=8)
  stats = {pol: syn.environment_stats(_fresh(syn.EnvConfig(**sizes, dhf_policies=pol)))
           for pol in (("behaviour",), ("sft",), ("behaviour", "sft"))}
  lo, hi = stats[("behaviour",)]["dhf_reward"], stats[("sft",)]["dhf_reward"]
  mixed = stats[("behaviour", "sft")]["dhf_reward"]
  assert hi - lo > 0.15 and lo + 0.05 < mixed < hi - 0.05, (lo, mixed, hi)
  assert syn.EnvConfig().dhf_policies == ("behaviour",)
  a = _fresh(syn.EnvConfig(**sizes, dhf_policies=("sft", "behaviour")))
  b = _fresh(syn.EnvConfig(**sizes, dhf_policies=("sft", "behaviour")))
  assert a.dhf == b.dhf
  one = _fresh(syn.EnvConfig(**sizes, dhf_policies=("behaviour",))).dhf["train"]
  rng = lambda stream, i: np.random.default_rng([2, stream, 0, i])
  for i in range(5):  # the first pair of prompt i, redrawn by hand from the two streams
    prompt, rb = one[2 * i].prompt, rng(2, i)
    y1 = syn.behaviour_response(prompt, rb)
    y2 = syn.behaviour_response(prompt, rb)
    while y2 == y1:
      y2 = syn.behaviour_response(prompt, rb)
    first = syn.bt_label(syn.golden_reward(prompt, y1), syn.golden_reward(prompt, y2), rng(3, i))
    assert (one[2 * i].chosen, one[2 * i].rejected) == ((y1, y2) if first else (y2, y1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(dhf_policies=("behaviour", "behaviour")), "dhf_policies"),
    (dict(dhf_policies=("human",)), "dhf_policies"),
    (dict(dhf_policies="sft"), "dhf_policies"),
    (dict(dhf_policies=()), "dhf_policies"),
    (dict(num_train_prompts=0), "num_train_prompts"),
    (dict(pairs_per_prompt=-1), "pairs_per_prompt"),
    (dict(seed=-1), "seed"),
    (dict(bt_temperature=0.0), "bt_temperature"),
    (dict(min_keywords=6, max_keywords=4), "min_keywords=6, max_keywords=4"),
    (dict(max_keywords=40), "max_keywords=40"),
    (dict(max_response_words=0), "max_response_words"),
    (dict(sft_keep_prob=0.0), "sft_keep_prob"),
])
def test_env_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    syn.EnvConfig(**kwargs)


def test_bt_labels_follow_the_bradley_terry_rule():
  """The collect stage's raters: P(y1 preferred) = sigmoid((r*(y1) - r*(y2)) / tau) (oracle
  written from the rule), each pair an independent draw; equal r* is a coin flip."""
  prompt = "owl cat ram"
  cases = [("owl cat ram", "owl cat"), ("owl", "cat owl"), ("owl cat", "cat owl pig"),
           ("ram", "owl")]
  n = 20000
  rng = np.random.default_rng(0)
  for y1, y2 in cases:
    r1, r2 = syn.golden_reward(prompt, y1), syn.golden_reward(prompt, y2)
    for tau in (0.15, 0.5):
      want = 1.0 / (1.0 + math.exp(-(r1 - r2) / tau))
      got = syn.bt_labels(np.full(n, r1), np.full(n, r2), rng, tau)
      assert got.dtype == bool and got.shape == (n,)
      se = math.sqrt(want * (1 - want) / n) + 1e-9
      assert abs(got.mean() - want) < 5 * se + 1e-3, (y1, y2, tau, got.mean(), want)
  with pytest.raises(ValueError, match=r"must be \[n\] arrays, got \(2,\) and \(1,\)"):
    syn.bt_labels(np.zeros(2), np.zeros(1), rng)


@pytest.mark.parametrize("prompt,response,ordered,unordered", [
    ("owl cat ram", "ram owl", 1 / 3 - 0.1, 2 / 3),
    ("owl cat ram", "owl cat ram", 1.0, 1.0),
    ("owl cat ram", "ram cat owl", 1 / 3 - 0.2, 1.0),
    ("owl cat ram", "owl owl cat", 2 / 3 - 0.1, 2 / 3 - 0.1),  # a repeat is an extra word
    ("owl cat ram", "dog", -0.1, -0.1),
])
def test_golden_reward_in_order_and_in_any_order(prompt, response, ordered, unordered):
  assert syn.golden_reward(prompt, response) == pytest.approx(ordered)
  assert syn.golden_reward(prompt, response, ordered=False) == pytest.approx(unordered)


def test_the_testbed_shape_and_the_r_star_each_task_prefix_registered():
  from rso_jax.tasks import embedded  # pylint: disable=g-import-not-at-top
  config = syn.EnvConfig(num_train_prompts=300, min_keywords=6, max_keywords=10,
                         max_response_words=12, sft_keep_prob=0.5, ordered=False)
  data = syn.build_environment(config)
  sizes = {len(p.split()) for s in syn.SPLITS for p in data.prompts[s]}
  assert sizes == set(range(6, 11))
  assert max(len(y.split()) for y in data.sft["train"]) <= 12
  kept = np.mean([len(y.split()) / len(p.split()) for p, y in zip(data.prompts["train"],
                                                                   data.sft["train"])])
  assert 0.45 < kept < 0.75  # about half the keywords, plus the occasional filler
  for q in data.dhf["train"][:50]:  # D_hf's rewards are the unordered r*
    assert q.chosen_reward == pytest.approx(syn.golden_reward(q.prompt, q.chosen, False))
  embedded.register_synthetic_tasks(prefix="synthetic_tb", num_train_prompts=300,
                                    ordered=False)
  try:
    assert golden.golden_reward_of("synthetic_tb_prompts")(["owl cat"], ["cat owl"])[0] == 1.0
    assert golden.golden_reward_of("synthetic_prompts")(["owl cat"], ["cat owl"])[0] < 1.0
    assert golden.golden_reward_of("tldr_prompts") is None
  finally:
    golden.register_reward_order("synthetic_tb", True)
