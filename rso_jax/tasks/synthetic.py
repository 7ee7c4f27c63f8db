"""The embedded synthetic environment: ordered keyword listing with an exact golden reward.

Task. A prompt `x` is 2-5 distinct three-letter animal words from a 32-word lexicon, e.g.
`"owl cat ram"`. The ideal response lists exactly those words, in the same order:
`best_response(x) == "owl cat ram"`. Prompts are <= 19 bytes, responses <= 23 bytes, so feature
lengths 32/32 hold every example with its EOS.

Golden reward (exact, pure Python; computed in `golden.py`, below the tasks layer):

  r*(x, y) = m / k - LAMBDA * (n - m)

where k = number of prompt keywords, n = number of whitespace-separated words in y, and
m = LCS(keywords(x), words(y)) is the longest common subsequence (keywords covered *in order*).
So r* is coverage in [0, 1] minus LAMBDA = 0.1 per word that does not help; the best response
scores exactly 1, the empty response 0. An environment with `ordered=False` counts the distinct
keywords covered in any order instead (the study's testbed: `EnvConfig`'s shape fields).

Why it is hackable. The *behaviour policy* (a verbose, careless lister) writes long responses
that are long because they happen to cover more keywords (each kept keyword drags an extra
filler word along with probability 0.4). Among its pairs the longer response is chosen about
three times in four, so "longer is better" is a shortcut a proxy reward model can learn from
such data alone, while r* charges 0.1 for every word beyond what is needed: a policy that pads
or repeats words climbs the proxy and falls on r*.

Who wrote `D_hf` (`EnvConfig.dhf_policies`). By default the behaviour policy alone.
`("behaviour", "sft")` compares, like OpenAI's TL;DR comparisons, responses of several policies:
each side of a pair is drawn uniformly from the behaviour policy or the SFT annotator. Measured
(byte vocabulary; a tiny BT reward model, 600 steps, 8 samples of π_sft per validation prompt):
accuracy against r* on pairs of π_sft's samples 0.511 (behaviour) vs 0.526 (both) -- π_sft's
samples (mean r* 0.33, words that are not in the prompt) are off both distributions.

Data (all deterministic from an integer seed; streams are independent per prompt):
- SFT demonstrations (a terse, sloppy annotator): each keyword dropped with probability 0.25,
  a filler inserted with probability 0.2, an adjacent pair swapped with probability 0.25;
  mean r* about 0.65 against 1.0 for the best response.
- `D_hf`: two distinct responses per pair, each from one of `dhf_policies` (default: the
  behaviour policy), labeled by a Bradley-Terry draw P(y1 > y2) = sigmoid((r*(x, y1) - r*(x, y2)) / TAU),
  TAU = 0.15 (noisy like human raters).
- Prompt splits: validation and test prompts are drawn first and never reused for training.

Nothing here imports TensorFlow; `embedded.py` wraps this data as seqio tasks.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from rso_jax.tasks import text_formats
# The golden reward lives below the tasks layer (the inference layer's oracle reward reads it).
from rso_jax.tasks.golden import BT_TEMPERATURE  # pylint: disable=unused-import
from rso_jax.tasks.golden import as_text
from rso_jax.tasks.golden import golden_reward
from rso_jax.tasks.golden import golden_rewards
from rso_jax.tasks.golden import keywords

LEXICON: tuple[str, ...] = (
    "ant", "ape", "asp", "bat", "bee", "boa", "cat", "cod", "cow", "cub", "doe", "dog", "eel",
    "elk", "emu", "ewe", "fox", "gar", "gnu", "hen", "hog", "jay", "kid", "koi", "owl", "pig",
    "pug", "ram", "rat", "ray", "sow", "yak")
MIN_KEYWORDS = 2
MAX_KEYWORDS = 5
MAX_RESPONSE_WORDS = 6  # Behaviour/SFT responses are capped at 6 words = 23 bytes.

# SFT annotator (terse, sloppy).
SFT_KEEP_PROB = 0.75
SFT_FILLER_PROB = 0.2
SFT_SWAP_PROB = 0.25
# Behaviour policy that produced D_hf (verbose, careless).
BEHAVIOUR_KEEP_PROB = 0.5
BEHAVIOUR_FILLER_PROB = 0.4
BEHAVIOUR_SWAP_PROB = 0.15

SPLITS: tuple[str, ...] = ("train", "validation", "test")
_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
_PROMPT_STREAM, _SFT_STREAM, _BEHAVIOUR_STREAM, _LABEL_STREAM, _SOURCE_STREAM = 0, 1, 2, 3, 4
# The policies whose responses D_hf compares (EnvConfig.dhf_policies); see the module doc.
DHF_POLICIES: tuple[str, ...] = ("behaviour",)


def best_response(prompt: str | bytes) -> str:
  """The unique r*-maximizing response (r* = 1): the prompt's keywords in order."""
  kw = keywords(as_text(prompt, "prompt"))
  if not kw:
    raise ValueError(f"best_response: prompt has no keywords: prompt={prompt!r}")
  return " ".join(kw)


def bt_probability(r1: float | np.ndarray, r2: float | np.ndarray,
                   tau: float = BT_TEMPERATURE) -> float | np.ndarray:
  """Bradley-Terry P(y1 > y2) = sigmoid((r1 - r2) / tau)."""
  if not tau > 0:
    raise ValueError(f"bt_probability: tau must be > 0, got {tau!r}")
  z = (np.asarray(r1, np.float64) - np.asarray(r2, np.float64)) / tau
  p = 0.5 * (1.0 + np.tanh(0.5 * z))  # Overflow-free sigmoid.
  return float(p) if np.ndim(p) == 0 else p


def bt_label(r1: float, r2: float, rng: np.random.Generator,
             tau: float = BT_TEMPERATURE) -> bool:
  """One simulated rater: True iff y1 is preferred, drawn with P = sigmoid((r1 - r2) / tau)."""
  return bool(rng.random() < bt_probability(r1, r2, tau))


def bt_labels(r1: np.ndarray, r2: np.ndarray, rng: np.random.Generator,
              tau: float = BT_TEMPERATURE) -> np.ndarray:
  """`bt_label` over `[n]` pairs of golden rewards (the collect stage's raters): `[n]` bool,
  True where y1 is preferred, each an independent draw with P = sigmoid((r1 - r2) / tau)."""
  r1, r2 = np.asarray(r1, np.float64), np.asarray(r2, np.float64)
  if r1.shape != r2.shape or r1.ndim != 1:
    raise ValueError(f"bt_labels: r1 and r2 must be [n] arrays, got {r1.shape} and {r2.shape}")
  return rng.random(len(r1)) < bt_probability(r1, r2, tau)


# ----------------------------------------------------------------------------- generators


def _rng(seed: int, stream: int, *ids: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), stream, *ids])


def sample_prompt(rng: np.random.Generator, min_keywords: int = MIN_KEYWORDS,
                  max_keywords: int = MAX_KEYWORDS) -> str:
  """A prompt: min_keywords..max_keywords distinct lexicon words, space separated."""
  k = int(rng.integers(min_keywords, max_keywords + 1))
  idx = rng.choice(len(LEXICON), size=k, replace=False)
  return " ".join(LEXICON[i] for i in idx)


def _filler(rng: np.random.Generator, kw: Sequence[str]) -> str:
  """A lexicon word that is not a keyword of the prompt."""
  while True:
    w = LEXICON[int(rng.integers(len(LEXICON)))]
    if w not in kw:
      return w


def _swap_adjacent(rng: np.random.Generator, words: list[str]) -> None:
  if len(words) >= 2:
    i = int(rng.integers(len(words) - 1))
    words[i], words[i + 1] = words[i + 1], words[i]


def sft_demo(prompt: str, rng: np.random.Generator, keep_prob: float = SFT_KEEP_PROB,
             max_words: int = MAX_RESPONSE_WORDS) -> str:
  """A middling demonstration: keywords dropped, a filler inserted, a pair swapped (see module doc)."""
  kw = keywords(prompt)
  out = [w for w in kw if rng.random() < keep_prob]
  if not out:
    out = [kw[int(rng.integers(len(kw)))]]
  if rng.random() < SFT_FILLER_PROB:
    out.insert(int(rng.integers(len(out) + 1)), _filler(rng, kw))
  if rng.random() < SFT_SWAP_PROB:
    _swap_adjacent(rng, out)
  return " ".join(out[:max_words])


def behaviour_response(prompt: str, rng: np.random.Generator,
                       max_words: int = MAX_RESPONSE_WORDS) -> str:
  """The D_hf behaviour policy: each keyword kept w.p. 0.5 and followed by a filler w.p. 0.4.

  Longer responses therefore tend to cover more keywords (the length/preference correlation that
  makes the proxy hackable); an adjacent swap w.p. 0.15; never empty (a lone filler if nothing
  was kept); at most MAX_RESPONSE_WORDS words.
  """
  kw = keywords(prompt)
  out: list[str] = []
  for w in kw:
    if rng.random() < BEHAVIOUR_KEEP_PROB:
      out.append(w)
      if rng.random() < BEHAVIOUR_FILLER_PROB:
        out.append(_filler(rng, kw))
  if not out:
    out = [_filler(rng, kw)]
  if rng.random() < BEHAVIOUR_SWAP_PROB:
    _swap_adjacent(rng, out)
  return " ".join(out[:max_words])


_RESPONSE_POLICIES = {"behaviour": behaviour_response, "sft": sft_demo}


def _author(policy: str, config: "EnvConfig"):
  """`policy`'s response function `(prompt, rng) -> str` at the environment's shape."""
  if policy == "sft":
    return functools.partial(sft_demo, keep_prob=config.sft_keep_prob,
                             max_words=config.max_response_words)
  return functools.partial(_RESPONSE_POLICIES[policy], max_words=config.max_response_words)


# ----------------------------------------------------------------------------- the dataset


class PreferencePair(NamedTuple):
  """One D_hf record; `chosen` won the Bradley-Terry draw on r*."""
  prompt: str
  chosen: str
  rejected: str
  chosen_reward: float  # r*(prompt, chosen)
  rejected_reward: float  # r*(prompt, rejected)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
  """Sizes and seed of the synthetic environment (hashable: it keys the build cache)."""
  seed: int = 0
  num_train_prompts: int = 4000
  num_validation_prompts: int = 256
  num_test_prompts: int = 256
  pairs_per_prompt: int = 2  # D_hf pairs per prompt: 8,000 train pairs by default.
  bt_temperature: float = BT_TEMPERATURE
  dhf_policies: tuple[str, ...] = DHF_POLICIES  # who wrote D_hf's responses (module doc)
  # The task's shape (module doc, "Shapes"): keywords per prompt, the response cap, and how
  # often the SFT annotator keeps a keyword.
  min_keywords: int = MIN_KEYWORDS
  max_keywords: int = MAX_KEYWORDS
  max_response_words: int = MAX_RESPONSE_WORDS
  sft_keep_prob: float = SFT_KEEP_PROB
  ordered: bool = True  # r* counts keywords in order (False: in any order; `golden_reward`)

  def __post_init__(self):
    for f in ("num_train_prompts", "num_validation_prompts", "num_test_prompts",
              "pairs_per_prompt"):
      v = getattr(self, f)
      if not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"EnvConfig.{f} must be a positive integer, got {v!r}")
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f"EnvConfig.seed must be a non-negative integer, got {self.seed!r}")
    if not (isinstance(self.min_keywords, (int, np.integer))
            and isinstance(self.max_keywords, (int, np.integer))
            and 1 <= self.min_keywords <= self.max_keywords <= len(LEXICON)):
      raise ValueError(f"EnvConfig: need 1 <= min_keywords <= max_keywords <= {len(LEXICON)} "
                       f"(the lexicon), got min_keywords={self.min_keywords!r}, "
                       f"max_keywords={self.max_keywords!r}")
    if not isinstance(self.max_response_words, (int, np.integer)) or self.max_response_words < 1:
      raise ValueError("EnvConfig.max_response_words must be a positive integer, got "
                       f"{self.max_response_words!r}")
    if not 0.0 < self.sft_keep_prob <= 1.0:
      raise ValueError(f"EnvConfig.sft_keep_prob must be in (0, 1], got {self.sft_keep_prob!r}")
    if not self.bt_temperature > 0:
      raise ValueError(f"EnvConfig.bt_temperature must be > 0, got {self.bt_temperature!r}")
    policies = self.dhf_policies
    if (isinstance(policies, str) or not policies or len(set(policies)) != len(policies)
        or any(p not in _RESPONSE_POLICIES for p in policies)):
      raise ValueError(f"EnvConfig.dhf_policies must be distinct names among "
                       f"{sorted(_RESPONSE_POLICIES)}, got {policies!r}")

  def num_prompts(self, split: str) -> int:
    if split not in _SPLIT_IDS:
      raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}")
    return {"train": self.num_train_prompts, "validation": self.num_validation_prompts,
            "test": self.num_test_prompts}[split]


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  """Everything the seqio tasks serve, per split (`prompts[s][i]` pairs with `sft[s][i]`)."""
  config: EnvConfig
  prompts: Mapping[str, tuple[str, ...]]
  sft: Mapping[str, tuple[str, ...]]
  dhf: Mapping[str, tuple[PreferencePair, ...]]


def _generate_prompts(config: EnvConfig) -> dict[str, tuple[str, ...]]:
  """Distinct prompts; held-out splits first so they do not move when the train size changes."""
  rng = _rng(config.seed, _PROMPT_STREAM)
  seen: set[str] = set()
  out = {}
  for split in ("validation", "test", "train"):
    prompts = []
    while len(prompts) < config.num_prompts(split):
      p = sample_prompt(rng, config.min_keywords, config.max_keywords)
      if p not in seen:
        seen.add(p)
        prompts.append(p)
    out[split] = tuple(prompts)
  return out


def _pairs_for_prompt(config: EnvConfig, split: str, i: int, prompt: str) -> list[PreferencePair]:
  """`pairs_per_prompt` labeled pairs; each side's author drawn uniformly from `dhf_policies`.

  One policy (`("behaviour",)`) draws nothing from the source stream: its pairs are exactly the
  first pipeline's.
  """
  rng_b = _rng(config.seed, _BEHAVIOUR_STREAM, _SPLIT_IDS[split], i)
  rng_l = _rng(config.seed, _LABEL_STREAM, _SPLIT_IDS[split], i)
  rng_s = _rng(config.seed, _SOURCE_STREAM, _SPLIT_IDS[split], i)
  authors = [_author(p, config) for p in config.dhf_policies]
  pick = ((lambda: authors[0]) if len(authors) == 1
          else (lambda: authors[int(rng_s.integers(len(authors)))]))
  pairs = []
  for _ in range(config.pairs_per_prompt):
    write_1, write_2 = pick(), pick()
    y1 = write_1(prompt, rng_b)
    for _ in range(32):  # Two distinct responses (identical ones carry no preference signal).
      y2 = write_2(prompt, rng_b)
      if y2 != y1:
        break
    r1, r2 = golden_reward(prompt, y1, config.ordered), golden_reward(prompt, y2, config.ordered)
    if bt_label(r1, r2, rng_l, config.bt_temperature):
      pairs.append(PreferencePair(prompt, y1, y2, r1, r2))
    else:
      pairs.append(PreferencePair(prompt, y2, y1, r2, r1))
  return pairs


@functools.lru_cache(maxsize=8)
def build_environment(config: EnvConfig = EnvConfig()) -> SyntheticData:
  """Generates all splits; deterministic in `config` (cached, so call it freely)."""
  prompts = _generate_prompts(config)
  sft, dhf = {}, {}
  for split in SPLITS:
    sid = _SPLIT_IDS[split]
    demo = _author("sft", config)
    sft[split] = tuple(demo(p, _rng(config.seed, _SFT_STREAM, sid, i))
                       for i, p in enumerate(prompts[split]))
    dhf[split] = tuple(pair for i, p in enumerate(prompts[split])
                       for pair in _pairs_for_prompt(config, split, i, p))
  return SyntheticData(config=config, prompts=prompts, sft=sft, dhf=dhf)


# ----------------------------------------------------------------------------- statistics


def environment_stats(data: SyntheticData, split: str = "train") -> dict[str, float]:
  """Numbers for the README table: mean r* by source, D_hf agreement with r*, length shortcut.

  Returns a dict with
    sft_reward, dhf_reward, best_reward: mean r* of SFT demos, of D_hf responses (both
      sides) and of `best_response`;
    dhf_agreement: fraction of non-tied pairs whose chosen response has the higher r*;
    dhf_tie_rate: fraction of pairs with equal r* (the label is a coin flip there);
    longer_chosen_rate: among pairs of different word counts, fraction where the longer is chosen;
    golden_chosen_rate_same_pairs: r*-oracle accuracy on those same pairs (ties count 1/2);
    length_label_corr: Pearson correlation over those pairs, both orientations, between
      sign(n_words(y1) - n_words(y2)) and the label 1[y1 chosen];
    length_reward_corr: Pearson correlation of n_words(y) and r*(x, y) over D_hf responses.
  """
  prompts = data.prompts[split]
  pairs = data.dhf[split]
  sft_r = golden_rewards(prompts, data.sft[split], data.config.ordered)
  best_r = golden_rewards(prompts, [best_response(p) for p in prompts], data.config.ordered)
  rc = np.array([p.chosen_reward for p in pairs])
  rr = np.array([p.rejected_reward for p in pairs])
  lc = np.array([len(p.chosen.split()) for p in pairs])
  lr = np.array([len(p.rejected.split()) for p in pairs])
  untied = ~np.isclose(rc, rr)
  diff_len = lc != lr
  oracle = np.where(np.isclose(rc, rr), 0.5, (rc > rr).astype(float))
  # Both orientations of each pair: (chosen, rejected) with label 1 and (rejected, chosen) with 0.
  sign = np.sign(lc - lr)[diff_len].astype(float)
  x = np.concatenate([sign, -sign])
  y = np.concatenate([np.ones_like(sign), np.zeros_like(sign)])
  lengths = np.concatenate([lc, lr]).astype(float)
  rewards = np.concatenate([rc, rr])
  return {
      "sft_reward": float(sft_r.mean()),
      "dhf_reward": float(rewards.mean()),
      "best_reward": float(best_r.mean()),
      "dhf_agreement": float((rc > rr)[untied].mean()),
      "dhf_tie_rate": float(1.0 - untied.mean()),
      "longer_chosen_rate": float((lc > lr)[diff_len].mean()),
      "golden_chosen_rate_same_pairs": float(oracle[diff_len].mean()),
      "length_label_corr": float(np.corrcoef(x, y)[0, 1]),
      "length_reward_corr": float(np.corrcoef(lengths, rewards)[0, 1]),
      "num_pairs": float(len(pairs)),
  }


def format_stats_table(stats: Mapping[str, float]) -> str:
  """A Markdown table of `environment_stats`."""
  rows = [
      ("mean r*, SFT demonstrations", stats["sft_reward"]),
      ("mean r*, D_hf responses (both sides)", stats["dhf_reward"]),
      ("mean r*, best possible response", stats["best_reward"]),
      ("D_hf label agreement with r* (non-tied pairs)", stats["dhf_agreement"]),
      ("D_hf pairs tied on r*", stats["dhf_tie_rate"]),
      ("longer response chosen (pairs of unequal length)", stats["longer_chosen_rate"]),
      ("r* oracle accuracy on those pairs", stats["golden_chosen_rate_same_pairs"]),
      ("corr(sign length difference, label)", stats["length_label_corr"]),
      ("corr(length, r*) over D_hf responses", stats["length_reward_corr"]),
  ]
  lines = ["| quantity | value |", "|---|---|"]
  lines += [f"| {name} | {value:.3f} |" for name, value in rows]
  return "\n".join(lines)


def vocabulary_corpus(data: SyntheticData) -> list[str]:
  """The texts the word-level vocabulary is trained on (`vocab.train_synthetic_words_model`):
  train prompts and SFT demos, the Bradley-Terry model's packed `x [RESPONSE] y`, the pairwise
  model's ranking inputs of the first 2,000 D_hf pairs and its answers "A" / "B"."""
  texts = []
  for p, y in zip(data.prompts["train"], data.sft["train"]):
    texts += [p, y, p + text_formats.BT_SEPARATOR + y]
  for q in data.dhf["train"][:2000]:
    texts += [text_formats.ranking_input_text(q.prompt, q.chosen, q.rejected), "A", "B"]
  return texts


def main(argv: Sequence[str] | None = None) -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--split", default="train", choices=SPLITS)
  parser.add_argument("--num_train_prompts", type=int, default=EnvConfig.num_train_prompts)
  parser.add_argument("--dhf_policies", default=",".join(DHF_POLICIES),
                      help="comma-separated authors of D_hf's responses: behaviour, sft")
  args = parser.parse_args(argv)
  policies = tuple(p.strip() for p in args.dhf_policies.split(",") if p.strip())
  data = build_environment(EnvConfig(seed=args.seed, num_train_prompts=args.num_train_prompts,
                                     dhf_policies=policies))
  print(format_stats_table(environment_stats(data, args.split)))


if __name__ == "__main__":
  main()
