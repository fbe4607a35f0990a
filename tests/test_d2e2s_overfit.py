"""A tiny D2E2S (DeBERTa encoder + head) overfits 8 sentences of 14res through the real
data pipeline, and decoding recovers their gold triplets.

Nearly all of its time is XLA compilation (init, train step, predict); the 300 steps
themselves take about 10 s. Measured 55 s on the 2-core machine while other test runs
kept its load average near 7, so it stays in the default run.
"""

import time

import jax
import numpy as np
import optax

from d2e2s_jax import tokenization
from d2e2s_jax.data import batching, encoding, readers
from d2e2s_jax.models import d2e2s, decoding, losses
from d2e2s_jax.models.deberta_v2_config import DebertaV2Config

NUM_SENTENCES = 8
STEPS = 300
# The KL term carries no gradient (released behaviour), so the bound is on the two
# classification losses.
LOSS_BOUND = 0.05


def test_tiny_model_overfits_eight_sentences(shared_data_dir, tmp_path):
  started = time.perf_counter()
  examples = readers.read_examples(shared_data_dir / "aste/14res/train_dep_triple_polarity_result.json")
  examples = [e for e in examples if e.triplets and len(e.tokens) <= 20][:NUM_SENTENCES]
  tokenizer = tokenization.load_tokenizer(tokenization.train_sentencepiece_tokenizer(
      [" ".join(e.tokens) for e in examples], tmp_path / "tokenizer", vocab_size=200))
  encoded = encoding.encode_examples(examples, tokenizer, max_length=64)
  # Every negative span and pair (the released sampling), as the model must learn them all.
  batch_config = batching.BatchConfig.for_tokenizer(tokenizer, batch_size=NUM_SENTENCES, max_span_size=4,
                                                    neg_entity_count=-1, neg_triple_count=-1, shuffle=False)
  train_batch = next(batching.train_batches(encoded, batch_config, epoch=0, seed=0))
  eval_batch = next(batching.eval_batches(encoded, batch_config))

  encoder = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, relative_attention=True,
                            position_buckets=16, pos_att_type="p2c|c2p", position_biased_input=False,
                            pad_token_id=tokenizer.pad_token_id)
  config = d2e2s.D2E2SConfig(hidden_size=32, hidden_dim=16, attention_heads=2, size_embedding=8,
                             drop_out_rate=0.0, prop_drop=0.0, gcn_dropout=0.0, max_decoded_spans=16,
                             sen_filter_threshold=0.5, encoder=encoder)
  model = d2e2s.D2E2S(config)
  params = jax.jit(model.init)(jax.random.key(0), train_batch)["params"]
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, batch):
    def loss_fn(params):
      return losses.d2e2s_loss(model.apply({"params": params}, batch), batch)

    (_, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, parts

  opt_state = optimizer.init(params)
  first = None
  for _ in range(STEPS):
    params, opt_state, parts = step(params, opt_state, train_batch)
    first = first if first is not None else float(parts["entity"] + parts["sentiment"])
  final = float(parts["entity"] + parts["sentiment"])
  assert final < LOSS_BOUND < first, (first, final)

  decoded = jax.device_get(jax.jit(lambda p, b: model.apply({"params": p}, b, method=d2e2s.D2E2S.predict))(
      params, eval_batch))
  predicted = decoding.host_predictions(decoded, eval_batch["span_mask"], eval_batch["span_word_bounds"])
  for row in np.nonzero(eval_batch["example_mask"])[0]:
    gold = set(examples[eval_batch["example_index"][row]].triplets)
    assert predicted[row].triplets() == gold, (row, predicted[row].triplets(), gold)
  print(f"overfit: loss {first:.3f} -> {final:.4f} in {STEPS} steps, {time.perf_counter() - started:.1f}s")
