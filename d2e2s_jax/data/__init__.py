"""The ASTE input pipeline.

Modules, in pipeline order (import them directly; this package imports nothing so that
reading data does not pull in jax):

* `examples`: `Example`, `Triplet`, `DataError`, and the label vocabularies
  (`SENTIMENTS`, `SENTIMENT_OUTPUTS`, `ENTITY_TYPES`, `ENTITY_OUTPUTS`).
* `readers`: `read_examples(path, format="d2e2s"|"aste_v2", skip_invalid=False)`,
  `read_examples_with_errors`, `dataset_paths`.
* `writers`: `write_examples(examples, path, format)`.
* `parses`: validating the JSON dependency parse and aligning it to the words.
* `encoding`: `encode_example(example, tokenizer, max_length=..., on_overflow=...)`,
  `encode_examples`, `EncodedExample`.
* `graphs`: the syntactic graph over sub-token positions (port and released
  constructions), as edge lists.
* `sampling`: span and pair candidates, train negatives, sample sizes.
* `batching`: `BatchConfig`, `plan_dataset` (a `PlannedSplit`), `train_batches`,
  `eval_batches`, `ShapePlan`, `shape_report`.
* `jraph_compat`: jraph with the removed `jax.tree_map` restored, the only shim.
"""
