"""The real-shaped fixture builders of `realdata.py` make what they claim."""
import json
import os

import numpy as np
import pytest

import realdata
from rso_jax import checkpoints
from rso_jax.tasks import preference_files as pf


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("realdata"))
  spm_path = realdata.make_spm(d)
  files = realdata.make_tldr_files(d, spm_path, n_train=40, n_val=10)
  return {"dir": d, "spm": spm_path, "tldr": files,
          "trl": realdata.make_trl_jsonl(d, n=50), "hh": realdata.make_hh_jsonl(d, n=50)}


def _lines(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(l) for l in f]


def _sp(path):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  return spm.SentencePieceProcessor(model_file=path)


def test_spm_is_english_like_and_deterministic(built, tmp_path):
  sp = _sp(built["spm"])
  assert sp.get_piece_size() == 800
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  pieces = sp.encode("I don't know if I should talk about the car.", out_type=str)
  assert {"▁should", "▁know", "▁about", "▁the"} <= set(pieces), pieces
  again = _sp(realdata.make_spm(str(tmp_path)))
  assert ([sp.id_to_piece(i) for i in range(800)] ==
          [again.id_to_piece(i) for i in range(800)])


def test_tldr_files_have_tldr_shapes_and_lengths(built, tmp_path):
  files, sp = built["tldr"], _sp(built["spm"])
  assert sorted(files) == ["comparisons_train", "comparisons_validation", "sft_train",
                           "sft_validation"]
  sft = {s: _lines(files[f"sft_{s}"]) for s in ("train", "validation")}
  comp = {s: _lines(files[f"comparisons_{s}"]) for s in ("train", "validation")}
  assert (len(sft["train"]), len(sft["validation"])) == (40, 10)
  lengths = [len(sp.encode(r["post"])) for s in sft for r in sft[s]]
  assert min(lengths) >= 100 and max(lengths) <= 300, (min(lengths), max(lengths))
  assert max(lengths) - min(lengths) > 60  # a spread of lengths, not one size
  for s in comp:
    for c in comp[s]:
      assert set(c["info"]) >= {"subreddit", "title", "post"} and c["choice"] in (0, 1)
      texts = [x["text"] for x in c["summaries"]]
      assert len(texts) == 2 and texts[0] != texts[1]
      assert all(5 <= len(sp.encode(t)) <= 20 for t in texts), texts
    # Every post of the split is compared, most of them several times, not in runs.
    posts = [c["info"]["post"] for c in comp[s]]
    assert set(posts) == {r["post"] for r in sft[s]}
    assert len(posts) > 2 * len(set(posts))
    assert any(a != b for a, b in zip(posts, posts[1:]))
  assert all(5 <= len(sp.encode(r["summary"])) <= 20 for r in sft["train"])
  assert not {r["post"] for r in sft["train"]} & {r["post"] for r in sft["validation"]}
  # The loaders read them; "prompts" gives each post once.
  assert len(pf.read_records(files["sft_train"], "tldr_sft")) == 40
  assert len(pf.read_records(files["comparisons_train"], "tldr_comparisons")) == len(
      comp["train"])
  prompts = pf.read_records(files["comparisons_train"], "tldr_comparisons", kind="prompts")
  assert [p["inputs"] for p in prompts] == list(dict.fromkeys(
      pf.tldr_prompt(c["info"]["subreddit"], c["info"]["title"], c["info"]["post"])
      for c in comp["train"]))
  assert len(prompts) == 40
  # Deterministic from the seed.
  again = realdata.make_tldr_files(str(tmp_path), built["spm"], n_train=40, n_val=10)
  for k, path in files.items():
    with open(path, "rb") as f, open(again[k], "rb") as g:
      assert f.read() == g.read(), k


def test_trl_and_hh_files(built):
  rows = _lines(built["trl"])
  assert len(rows) == 50
  words = [len(r["prompt"].split()) for r in rows]
  assert min(words) >= 20 and max(words) <= 60
  assert all(r["chosen"] != r["rejected"] for r in rows)
  assert len(pf.read_records(built["trl"], "jsonl")) == 50
  hh = _lines(built["hh"])
  records = pf.read_records(built["hh"], "hh")
  assert len(records) == 50
  for raw, rec in zip(hh, records):
    assert raw["chosen"].startswith("\n\nHuman: ")
    assert rec["inputs"].endswith("\n\nAssistant:") and rec["chosen"] != rec["rejected"]
  assert any(r["inputs"].count("\n\nHuman:") > 1 for r in records)  # multi-turn too


def test_hf_t5_is_imported_with_its_vocabulary(built):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  import jax  # pylint: disable=g-import-not-at-top
  from rso_jax import convert  # pylint: disable=g-import-not-at-top
  from rso_jax import network  # pylint: disable=g-import-not-at-top
  path = realdata.make_hf_t5(built["dir"], built["spm"])
  assert path == os.path.join(built["dir"], "converted")
  m = checkpoints.read_manifest(path)
  assert m.kind == "seq2seq" and m.source == "convert"
  assert m.vocabulary["type"] == "sentencepiece" and m.vocabulary["extra_ids"] == 100
  assert m.vocabulary["file"] == "spiece.model"
  with open(os.path.join(path, "spiece.model"), "rb") as f, open(built["spm"], "rb") as g:
    assert f.read() == g.read()
  vocab = m.get_vocabulary()
  assert vocab.vocab_size == 900 and m.network.vocab_size == 1024
  cfg = m.network
  assert (cfg.emb_dim, cfg.num_encoder_layers, cfg.num_decoder_layers, cfg.num_heads,
          cfg.head_dim, cfg.mlp_dim) == (64, 2, 2, 4, 16, 128)
  assert cfg.mlp_activations == ("gelu", "linear") and not cfg.logits_via_embedding
  config, params = convert.load_converted(path)
  ids = list(vocab.encode("Should I tell my sister about the car?")) + [1]
  enc = np.array([ids], np.int32)
  dec = np.zeros((1, 4), np.int32)
  net = network.Transformer(config)
  forward = jax.jit(lambda p, e, d: net.apply({"params": p}, e, d, None, enable_dropout=False))
  logits = np.asarray(jax.device_get(forward(params, enc, dec)))
  assert logits.shape == (1, 4, 1024) and np.isfinite(logits).all()
  assert 0.1 < logits.std() < 10  # O(1) logits: sampling from it varies
