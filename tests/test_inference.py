"""Predictor and export bundles on a tiny trained run: records, errors, determinism, round trips.

The tiny run (4 steps) predicts no triplet yet, so the record-level tests use the same
model with its classifier biases pushed so that every kept span is a term and every pair
POSITIVE (`biased_bundle`): the formatting, spans and scores are then exercised on
dozens of triplets per sentence. The fixtures are shared with `test_predict_cli.py` and,
under pytest-xdist, trained once for all workers (a file lock guards the shared copy).
"""

import json
import pathlib
import shutil

import filelock
import jax
import numpy as np
import pytest

from d2e2s_jax import inference
from d2e2s_jax.data import readers
from d2e2s_jax.data.examples import SENTIMENTS
from d2e2s_jax.training import trainer
from d2e2s_jax.training.config import TrainConfig

TINY = dict(synthetic=True, synthetic_sizes=(32, 8, 8), dataset="synthetic", encoder="scratch",
            scratch_hidden_size=16, scratch_layers=2, scratch_heads=2, scratch_intermediate_size=32,
            scratch_vocab_size=200, scratch_position_buckets=16, attention_heads=2, max_length=128,
            lr=1e-3, batch_size=8, eval_batch_size=8, max_steps=4, progress_bar=False, max_decoded_spans=8)


def _shared_dir(tmp_path_factory) -> pathlib.Path:
  """A directory all xdist workers of this session see (the parent of their temp roots)."""
  root = tmp_path_factory.getbasetemp()
  return root.parent if root.name.startswith("popen-gw") else root


def _once(tmp_path_factory, name: str, build) -> pathlib.Path:
  """Builds `name` in the shared directory unless another worker already did."""
  shared = _shared_dir(tmp_path_factory)
  path = shared / name
  with filelock.FileLock(str(shared / f"{name}.lock")):
    if not (path / ".done").is_file():
      if path.exists():
        shutil.rmtree(path)
      build(path)
      (path / ".done").write_text("")
  return path


def _write_stand_in_parser(path: pathlib.Path) -> None:
  """An untrained blank-English spaCy parser: valid (if arbitrary) trees, built in a second."""
  import spacy  # pylint: disable=import-outside-toplevel

  nlp = spacy.blank("en")
  parser = nlp.add_pipe("parser")
  for label in ("nsubj", "amod", "det", "dep"):
    parser.add_label(label)
  nlp.initialize()
  nlp.to_disk(path)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> pathlib.Path:
  """A 4-step training run of the tiny synthetic config (its workdir)."""
  return _once(tmp_path_factory, "tiny_run", lambda path: trainer.train_and_evaluate(TrainConfig(**TINY), path))


@pytest.fixture(scope="session")
def parser_dir(tmp_path_factory) -> pathlib.Path:
  return _once(tmp_path_factory, "stand_in_parser", _write_stand_in_parser)


def biased(params):
  """Every candidate span a target, every pair of kept spans POSITIVE (score near 1)."""
  head = dict(params["head"])
  entity = dict(head["entity_classifier"])
  entity["bias"] = np.asarray(entity["bias"]) + np.asarray([-30.0, 30.0, 20.0], np.float32)
  senti = dict(head["senti_classifier"])
  senti["bias"] = np.asarray(senti["bias"]) + np.asarray([-30.0, 30.0, -30.0, -30.0], np.float32)
  head["entity_classifier"], head["senti_classifier"] = entity, senti
  return {**params, "head": head}


@pytest.fixture(scope="session")
def biased_bundle(tmp_path_factory, tiny_run, parser_dir) -> pathlib.Path:
  """A bundle (with the stand-in parser) of the tiny run with biased classifiers."""
  def build(path):
    base = inference.Predictor.from_workdir(tiny_run)
    predictor = inference.Predictor(base.config, base.encoder_config, base.tokenizer,
                                    params=biased(jax.device_get(base.params)), source="biased")
    predictor.save_bundle(path, parser=parser_dir)
  return _once(tmp_path_factory, "biased_bundle", build)


@pytest.fixture(scope="module")
def biased_predictor(biased_bundle):
  return inference.Predictor.from_bundle(biased_bundle)


def _test_examples(run: pathlib.Path):
  return readers.read_examples(run / "data" / "aste" / "synthetic" / "test_dep_triple_polarity_result.json")


def _check_record(record, tokens):
  assert set(record) >= {"text", "tokens", "triplets"}
  assert record["tokens"] == list(tokens)
  for triplet in record["triplets"]:
    assert set(triplet) == {"aspect", "aspect_text", "opinion", "opinion_text", "sentiment", "score"}
    for key in ("aspect", "opinion"):
      start, end = triplet[key]
      assert 0 <= start < end <= len(tokens)
      assert triplet[f"{key}_text"] == " ".join(tokens[start:end])
    assert triplet["sentiment"] in SENTIMENTS
    assert 0.0 <= triplet["score"] <= 1.0
  json.dumps(record)  # plain JSON types only


def test_predict_records_shapes_errors_and_determinism(biased_predictor, tiny_run):
  examples = _test_examples(tiny_run)
  too_long = " ".join(["pizza"] * 200)
  inputs = [examples[0], "", "The pizza was great .", too_long, ["the", "staff", "is", "rude"], examples[1],
            "   "]
  records = biased_predictor.predict(inputs)
  assert len(records) == len(inputs)

  assert records[1] == {"text": "", "error": "sentence 1: empty sentence"}
  assert records[6]["error"] == "sentence 6: empty sentence"
  assert records[3]["text"] == too_long and "exceed the model's max_length 128" in records[3]["error"]
  _check_record(records[0], examples[0].tokens)
  assert records[0]["id"] == examples[0].id and records[0]["text"] == " ".join(examples[0].tokens)
  _check_record(records[2], ["The", "pizza", "was", "great", "."])
  assert records[2]["text"] == "The pizza was great ."
  _check_record(records[4], ["the", "staff", "is", "rude"])
  _check_record(records[5], examples[1].tokens)
  # The biased model makes every kept span a target and every pair of them POSITIVE:
  # with k = 8 spans kept, 8 * 7 ordered pairs.
  assert len(records[0]["triplets"]) == 8 * 7
  assert all(t["sentiment"] == "POSITIVE" and t["score"] > 0.99 for t in records[0]["triplets"])

  # The bad sentences change nothing for the others, and a second call gives the same
  # records without compiling again.
  traces = biased_predictor.predict_step.trace_count()
  good = [inputs[i] for i in (0, 2, 4, 5)]
  assert biased_predictor.predict(good) == [records[i] for i in (0, 2, 4, 5)]
  assert biased_predictor.predict(inputs) == records
  assert biased_predictor.predict_step.trace_count() == traces


def test_static_shapes_depend_on_the_length_bucket_only(biased_predictor, tiny_run):
  """Other sentences of the same T bucket (other span and edge counts) reuse the compiled step."""
  from d2e2s_jax.data import batching, encoding  # pylint: disable=import-outside-toplevel

  examples = _test_examples(tiny_run)
  buckets = {}
  for example in examples:
    pieces = encoding.encode_example(example, biased_predictor.tokenizer, max_length=128).num_pieces
    buckets.setdefault(batching.bucket_size(pieces, None, 16), []).append(example)
  group = max(buckets.values(), key=len)
  assert len({len(example.tokens) for example in group}) > 1
  biased_predictor.predict(group[:1])
  traces = biased_predictor.predict_step.trace_count()
  biased_predictor.predict(group[1:])
  biased_predictor.predict(group[::-1])
  assert biased_predictor.predict_step.trace_count() == traces


def test_raw_text_needs_a_parser(tiny_run):
  predictor = inference.Predictor.from_workdir(tiny_run)
  with pytest.raises(inference.InferenceError, match="need a dependency parser"):
    predictor.predict(["The pizza was great ."])
  examples = _test_examples(tiny_run)[:3]
  records = predictor.predict(examples)  # parsed examples need none
  for record, example in zip(records, examples):
    _check_record(record, example.tokens)


def test_export_matches_workdir(tiny_run, parser_dir, tmp_path):
  from_workdir = inference.Predictor.from_workdir(tiny_run, which="best")
  bundle = inference.export_bundle(tiny_run, tmp_path / "bundle", parser=parser_dir)
  assert sorted(p.name for p in bundle.iterdir()) == [
      "bundle.json", "config.json", "encoder_config.json", "params", "parser", "tokenizer"]
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
  meta = json.loads((bundle / "bundle.json").read_text())
  assert meta["step"] == 4 and meta["checkpoint"] == "best" and meta["parser"]

  # The training workdir is not needed to load it.
  moved = tmp_path / "elsewhere"
  shutil.move(str(bundle), moved)
  from_bundle = inference.Predictor.from_bundle(moved)
  assert from_bundle.has_parser
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(from_workdir.params))
  other = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(from_bundle.params)))
  assert len(leaves) == len(other)
  for path, value in leaves:
    np.testing.assert_array_equal(value, other[path], err_msg=jax.tree_util.keystr(path))
  examples = _test_examples(tiny_run)
  assert from_bundle.predict(examples) == from_workdir.predict(examples)

  # An existing bundle is replaced only when asked.
  with pytest.raises(inference.InferenceError, match="already exists"):
    inference.export_bundle(tiny_run, moved)
  inference.export_bundle(tiny_run, moved, which="latest", overwrite=True)
  assert json.loads((moved / "bundle.json").read_text())["checkpoint"] == "latest"
  assert not (moved / "parser").exists()


def test_biased_bundle_round_trip(biased_bundle, biased_predictor, tiny_run, tmp_path):
  """save_bundle -> from_bundle keeps non-trivial predictions exactly."""
  examples = _test_examples(tiny_run)
  expected = biased_predictor.predict(examples)
  assert sum(len(record["triplets"]) for record in expected) > 0
  copy = biased_predictor.save_bundle(tmp_path / "copy")
  assert inference.Predictor.from_bundle(copy).predict(examples) == expected


def test_failed_export_leaves_nothing(tiny_run, tmp_path):
  with pytest.raises(ValueError, match="no-such-parser"):
    inference.export_bundle(tiny_run, tmp_path / "bundle", parser=str(tmp_path / "no-such-parser"))
  assert list(tmp_path.iterdir()) == []


def test_bad_sources_give_one_line_errors(tiny_run, tmp_path):
  with pytest.raises(inference.InferenceError, match="not a training workdir or bundle"):
    inference.Predictor.load(tmp_path)
  with pytest.raises(inference.InferenceError, match="which must be one of"):
    inference.Predictor.from_workdir(tiny_run, which="newest")
  # A config that does not describe the checkpointed parameters is refused, naming them.
  copy = tmp_path / "run"
  shutil.copytree(tiny_run / "checkpoints", copy / "checkpoints")
  config = json.loads((copy / "checkpoints" / "config.json").read_text())
  config["lstm_layers"] = 1
  (copy / "checkpoints" / "config.json").write_text(json.dumps(config))
  with pytest.raises(inference.InferenceError, match="do not match the model") as error:
    inference.Predictor.from_workdir(copy)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("num_words,max_span_size", [(1, 6), (5, 6), (6, 6), (40, 6), (3, 1)])
def test_num_candidate_spans_counts_the_candidates(num_words, max_span_size):
  from d2e2s_jax.data import batching, sampling  # pylint: disable=import-outside-toplevel

  assert batching.num_candidate_spans(num_words, max_span_size) == len(sampling.candidate_spans(num_words,
                                                                                              max_span_size))


def test_worst_case_shapes_keep_the_batch_contract(tiny_run):
  from d2e2s_jax import tokenization  # pylint: disable=import-outside-toplevel
  from d2e2s_jax.data import batching, encoding  # pylint: disable=import-outside-toplevel

  tokenizer = tokenization.load_tokenizer(tiny_run / "checkpoints" / "tokenizer")
  examples = _test_examples(tiny_run)[:3]
  encoded = encoding.encode_examples(examples, tokenizer, max_length=128)
  config = TrainConfig(**TINY).batch_config(tokenizer, training=False)
  batch = next(batching.eval_batches(encoded, config))
  planned = batching.plan_dataset(encoded, config, train=False)
  static = planned.with_shapes(batching.ShapePlan.worst_case(max_span_size=6, max_length=128))
  padded = next(batching.eval_batches(encoded, config, static))
  seq_len = batch["input_ids"].shape[1]
  assert padded["input_ids"].shape == batch["input_ids"].shape
  assert padded["span_mask"].shape[1] % 8 == 0
  assert padded["span_mask"].shape[1] >= batching.num_candidate_spans(seq_len - 2, 6)
  assert padded["graph_senders"].shape[1] == seq_len * seq_len
  spans = batch["span_mask"].shape[1]
  for key in batch:
    np.testing.assert_array_equal(padded[key][:, :batch[key].shape[1]] if batch[key].ndim > 1 else padded[key],
                                  batch[key], err_msg=key)
  assert not padded["span_mask"][:, spans:].any() and not padded["graph_edge_mask"][:, batch["graph_senders"].shape[1]:].any()
  assert (padded["span_token_bounds"][:, spans:] == [0, 1]).all()
