"""The optimizer against torch's AdamW, transformers' schedule and the released no-bias-correction rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from d2e2s_jax.training import optim


def _params(rng):
  return {
      "dense": {"kernel": rng.normal(size=(4, 3)).astype(np.float32),
                "bias": rng.normal(size=(3,)).astype(np.float32)},
      "LayerNorm": {"scale": rng.normal(size=(3,)).astype(np.float32),
                    "bias": rng.normal(size=(3,)).astype(np.float32)},
      "lstm": {"bias_ih": rng.normal(size=(3,)).astype(np.float32)},
      "size_embeddings": {"embedding": rng.normal(size=(5, 3)).astype(np.float32)},
  }


def _flat(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_decay_mask_skips_biases_and_norm_scales():
  mask = _flat(optim.decay_mask(_params(np.random.default_rng(0))))
  assert mask == {
      "['LayerNorm']['bias']": False,
      "['LayerNorm']['scale']": False,
      "['dense']['bias']": False,
      "['dense']['kernel']": True,
      "['lstm']['bias_ih']": False,
      "['size_embeddings']['embedding']": True,
  }


@pytest.mark.parametrize("total_steps,warmup", [(100, 0.1), (37, 0.25), (10, 0.0)])
def test_schedule_matches_transformers(total_steps, warmup):
  config = optim.OptimizerConfig(learning_rate=3e-4, warmup_fraction=warmup)
  ours = optim.learning_rate_schedule(config, total_steps)
  param = torch.nn.Parameter(torch.zeros(1))
  opt = torch.optim.SGD([param], lr=3e-4)
  sched = transformers.get_linear_schedule_with_warmup(opt, int(warmup * total_steps), total_steps)
  for step in range(total_steps + 2):
    np.testing.assert_allclose(float(ours(step)), sched.get_last_lr()[0], rtol=1e-6, atol=1e-12)
    opt.step()
    sched.step()


def _run_ours(config, params, grads_per_step, total_steps):
  tx = optim.make_optimizer(config, total_steps)
  state = tx.init(params)
  for grads in grads_per_step:
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params


def _grads(rng, params, steps):
  return [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
          for _ in range(steps)]


def test_bias_corrected_adamw_matches_torch():
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads = _grads(rng, params, 6)
  config = optim.OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.3, weight_decay=0.1,
                                 max_grad_norm=0.0, bias_correction=True)
  ours = _flat(_run_ours(config, params, grads, total_steps=8))

  flat_params = _flat(params)
  decay = _flat(optim.decay_mask(params))
  torch_params = {k: torch.nn.Parameter(torch.tensor(v)) for k, v in flat_params.items()}
  groups = [{"params": [p for k, p in torch_params.items() if decay[k]], "weight_decay": 0.1},
            {"params": [p for k, p in torch_params.items() if not decay[k]], "weight_decay": 0.0}]
  opt = torch.optim.AdamW(groups, lr=1e-2, eps=1e-8)
  sched = transformers.get_linear_schedule_with_warmup(opt, int(0.3 * 8), 8)
  for g in grads:
    for k, v in _flat(g).items():
      torch_params[k].grad = torch.tensor(v)
    opt.step()
    sched.step()
  for k in flat_params:
    np.testing.assert_allclose(ours[k], torch_params[k].detach().numpy(), rtol=1e-5, atol=1e-6,
                               err_msg=k)


def test_released_adamw_without_bias_correction():
  """transformers' old AdamW(correct_bias=False), written out in numpy."""
  rng = np.random.default_rng(2)
  params = _params(rng)
  grads = _grads(rng, params, 5)
  lr, wd, b1, b2, eps, total = 1e-2, 0.05, 0.9, 0.999, 1e-8, 5
  config = optim.OptimizerConfig(learning_rate=lr, warmup_fraction=0.0, weight_decay=wd,
                                 max_grad_norm=0.0)
  ours = _flat(_run_ours(config, params, grads, total_steps=total))

  decay = _flat(optim.decay_mask(params))
  expected = {}
  for key, p in _flat(params).items():
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for step, g in enumerate(grads):
      g = _flat(g)[key]
      step_lr = lr * (total - step) / total
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      # Decay of the pre-update parameter (optax order; see the module docstring).
      p = p - step_lr * (m / (np.sqrt(v) + eps) + (wd * p if decay[key] else 0.0))
    expected[key] = p
  for key in expected:
    np.testing.assert_allclose(ours[key], expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_clipping_and_accumulation():
  rng = np.random.default_rng(3)
  params = _params(rng)
  grads = _grads(rng, params, 4)
  base = optim.OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0, max_grad_norm=0.5)
  # Two micro-steps accumulated == one step on the mean gradient.
  accumulated = _run_ours(
      optim.OptimizerConfig(**{**base.__dict__, "gradient_accumulation_steps": 2}),
      params, grads[:2], total_steps=3)
  mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, grads[0], grads[1])
  single = _run_ours(base, params, [mean_grad], total_steps=3)
  for k, v in _flat(single).items():
    np.testing.assert_allclose(_flat(accumulated)[k], v, rtol=1e-6, atol=1e-7)
  # Clipping bounds the global norm of what reaches Adam: a huge gradient moves
  # parameters exactly as the same gradient scaled down to the clip norm.
  huge = jax.tree.map(lambda g: g * 1e4, grads[0])
  norm = float(optax.tree.norm(huge))
  scaled = jax.tree.map(lambda g: g * 0.5 / norm, huge)
  a = _flat(_run_ours(base, params, [huge], total_steps=3))
  b = _flat(_run_ours(base, params, [scaled], total_steps=3))
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e4, 1e-3])
def test_clipping_is_torch_clip_grad_norm(scale):
  # The released step clips with torch.nn.utils.clip_grad_norm_: g * min(1, max / (norm + 1e-6)).
  rng = np.random.default_rng(6)
  grads = jax.tree.map(lambda g: g * scale, _grads(rng, _params(rng), 1)[0])
  flat = _flat(grads)
  tensors = {key: torch.nn.Parameter(torch.zeros(value.shape)) for key, value in flat.items()}
  for key, tensor in tensors.items():
    tensor.grad = torch.from_numpy(flat[key].copy())
  torch.nn.utils.clip_grad_norm_(list(tensors.values()), 0.5)
  ours = _flat(optim.clip_by_global_norm(0.5).update(grads, optax.EmptyState())[0])
  for key, tensor in tensors.items():
    np.testing.assert_allclose(ours[key], tensor.grad.numpy(), rtol=1e-6, atol=0, err_msg=key)
  if scale < 1:  # under the threshold the gradient is untouched
    for key, value in flat.items():
      np.testing.assert_array_equal(ours[key], value)


def test_clipping_uses_a_given_norm():
  rng = np.random.default_rng(7)
  grads = jax.tree.map(lambda g: g * 1e4, _grads(rng, _params(rng), 1)[0])
  clip = optim.clip_by_global_norm(0.5)
  computed = _flat(clip.update(grads, optax.EmptyState())[0])
  given = _flat(clip.update(grads, optax.EmptyState(), grad_norm=optax.tree.norm(grads))[0])
  halved = _flat(clip.update(grads, optax.EmptyState(), grad_norm=2 * optax.tree.norm(grads))[0])
  for key, value in computed.items():
    np.testing.assert_array_equal(given[key], value)
    np.testing.assert_allclose(halved[key], value / 2, rtol=1e-6)


def test_bfloat16_moments():
  params = _params(np.random.default_rng(4))
  tx = optim.make_optimizer(optim.OptimizerConfig(moment_dtype="bfloat16"), 10)
  state = tx.init(params)
  moments = [leaf for leaf in jax.tree.leaves(state) if leaf.ndim > 0]
  assert moments and all(leaf.dtype == jnp.bfloat16 for leaf in moments)
  # Rounding the stored moments changes the first updates by well under a percent.
  grads = _grads(np.random.default_rng(5), params, 3)
  config = optim.OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0)
  exact = _flat(_run_ours(config, params, grads, 3))
  lean = _flat(_run_ours(optim.OptimizerConfig(**{**config.__dict__, "moment_dtype": "bfloat16"}),
                         params, grads, 3))
  for key, value in exact.items():
    moved = np.abs(value - _flat(params)[key]).max()
    assert np.abs(lean[key] - value).max() < 0.02 * moved, key


def test_factored_second_moment_state_is_small_and_updates_descend():
  rng = np.random.default_rng(6)
  params = {"kernel": rng.normal(size=(256, 160)).astype(np.float32),  # both dims >= 128: factored
            "bias": rng.normal(size=(160,)).astype(np.float32)}
  config = optim.OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0, second_moment="factored",
                                 weight_decay=0.0)
  tx = optim.make_optimizer(config, 100)
  state = tx.init(params)
  sizes = sum(leaf.size for leaf in jax.tree.leaves(state))
  full = sum(leaf.size for leaf in jax.tree.leaves(optim.make_optimizer(
      optim.OptimizerConfig(first_moment=False), 100).init(params)))
  assert sizes < 0.6 * full  # first moment only; the second is factored
  # It minimises a quadratic.
  target = jax.tree.map(np.zeros_like, params)
  loss = lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))
  start = float(loss(params))
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * start
  with pytest.raises(ValueError, match="second_moment"):
    optim.OptimizerConfig(second_moment="sparse")


def test_factored_view_merges_short_neighbours_from_the_right():
  assert optim.factored_view((1536, 24, 64)) == (1536, 1536)
  assert optim.factored_view((24, 64, 1536)) == (1536, 1536)
  assert optim.factored_view((47, 1536, 24, 64)) == (47, 1536, 1536)  # layers stay a batch axis
  assert optim.factored_view((47, 24, 64, 1536)) == (47, 1536, 1536)
  assert optim.factored_view((2, 3072, 6144)) == (2, 3072, 6144)
  assert optim.factored_view((7,)) == (7,)


def test_factored_decay_starts_at_zero_and_is_capped():
  np.testing.assert_allclose(optim.factored_decay(jnp.asarray(1), 0.999), 0.0)
  np.testing.assert_allclose(optim.factored_decay(jnp.asarray(2), 0.999), 1 - 2**-0.8, rtol=1e-6)
  np.testing.assert_allclose(optim.factored_decay(jnp.asarray(10**6), 0.999), 0.999)


def _lean_params(rng):
  return {
      "word_embeddings": {"embedding": rng.normal(size=(300, 160)).astype(np.float32)},  # 2-D, factored
      "layer": {"kernel": rng.normal(size=(5, 130, 2, 64)).astype(np.float32),  # stacked [5, 130, 128]
                "bias": rng.normal(size=(5, 40)).astype(np.float32)},
      "LayerNorm": {"scale": rng.normal(size=(7,)).astype(np.float32)},
      "lstm": {"kernel": rng.normal(size=(2, 20, 30)).astype(np.float32)},
  }


@pytest.mark.parametrize("second_moment", ["full", "factored"])
@pytest.mark.parametrize("first_moment", [True, False])
@pytest.mark.parametrize("moment_dtype", [None, "bfloat16"])
def test_sliced_update_equals_the_chain(second_moment, first_moment, moment_dtype):
  rng = np.random.default_rng(7)
  params = _lean_params(rng)
  config = optim.OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.2, second_moment=second_moment, first_moment=first_moment,
                                 moment_dtype=moment_dtype, max_grad_norm=5.0)
  chain = optim.make_optimizer(config, 10)
  whole = jax.jit(optim.make_update_fn(config, 10, chain))
  # 4 kB slices: every large leaf is cut (the embedding into row blocks, two passes).
  sliced = jax.jit(optim.make_update_fn(optim.OptimizerConfig(**{**config.__dict__, "update": "sliced"}), 10,
                                        slice_bytes=4096))
  state_a = state_b = chain.init(params)
  params_a = params_b = params
  for step in range(4):
    grads = jax.tree.map(lambda p: (rng.normal(size=p.shape) * (0.1 if step == 0 else 3)).astype(np.float32),
                         params)
    finite = step != 2
    if not finite:
      grads["LayerNorm"]["scale"][0] = np.nan
    params_a, state_a = whole(grads, state_a, params_a, jnp.asarray(finite))
    params_b, state_b = sliced(grads, state_b, params_b, jnp.asarray(finite))
  assert jax.tree.structure(state_a) == jax.tree.structure(state_b)
  moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params)))
  assert moved > 1e-3
  # A bfloat16 moment one ulp apart (below) moves its element's update by up to ~0.4% of
  # a learning-rate-sized step (lr 1e-2).
  param_atol = 1e-6 if moment_dtype is None else 5e-5
  for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=param_atol)
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    assert a.dtype == b.dtype and a.shape == b.shape
    # bfloat16 moments may round the (float32-equal to 1e-7) statistics one ulp apart.
    tolerance = 1e-2 if a.dtype == jnp.bfloat16 else 1e-5
    np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a, np.float32), rtol=tolerance, atol=1e-6)


def test_sliced_update_rejects_accumulation():
  with pytest.raises(ValueError, match="accumulation"):
    optim.OptimizerConfig(update="sliced", gradient_accumulation_steps=2)
  with pytest.raises(ValueError, match="--optimizer_update=partial: must be one of whole, sliced"):
    optim.OptimizerConfig(update="partial")


def test_slice_count():
  assert optim.slice_count(47, 1_692_401_664, 32 * 2**20) == 47
  assert optim.slice_count(128100, 787_046_400, 32 * 2**20) == 25
  assert optim.slice_count(7, 100, 1000) == 1
  assert optim.slice_count(13, 13_000, 10) == 13  # no divisor gets there: one row at a time


def test_optimizer_update_benchmark_runs_tiny():
  import importlib.util, pathlib  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "optimizer_update.py"
  spec = importlib.util.spec_from_file_location("benchmark_optimizer_update", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  figures = module.main(["--layers", "2", "--hidden", "256", "--heads", "4", "--ffn", "512", "--vocab", "600",
                         "--repeats", "1", "--json"])
  for name in ("adamw", "lean"):
    row = figures["optimizers"][name]
    assert row["whole_s"] > 0 and row["sliced_s"] > 0 and row["sliced_over_whole"] > 0
    assert row["whole_temp_mib"] >= 0 and row["sliced_temp_mib"] >= 0
  # Donated parameters and moments are updated in place: with the donated buffers paired
  # crosswise to the outputs, XLA copied every leaf (temporaries about twice the parameters).
  assert figures["optimizers"]["adamw"]["whole_temp_over_params"] < 0.5
  with pytest.raises(SystemExit):
    module.parse_args(["--optimizers", "sgd"])
