"""The ASTE input pipeline.

Modules, in pipeline order (import them directly; this package imports nothing so that
reading data does not pull in jax):

* `examples`: `Example`, `Triplet`, `DataError`.
* `readers`: `read_examples(path, format="d2e2s"|"aste_v2", skip_invalid=False)`,
  `read_examples_with_errors`, `dataset_paths`, `compare_datasets`.
* `writers`: `write_examples(examples, path, format)`.
* `parses`: validating the JSON dependency parse and aligning it to the words.
* `encoding`: `encode_example(example, tokenizer, max_length=..., on_overflow=...)`,
  `encode_examples`, `EncodedExample`.
* `graphs`: the syntactic graph over sub-token positions (port and released
  constructions), `dense_adjacency` and `batch_graphs_tuple` for use inside jit.
* `sampling`: span and pair candidates, `between_bounds`, `triplets_from_pairs`.
* `batching`: `BatchConfig`, `train_batches`, `eval_batches`, `batch_triplets`,
  `shape_report`.
* `jraph_compat`: jraph with the removed `jax.tree_map` restored, the only shim.
"""
