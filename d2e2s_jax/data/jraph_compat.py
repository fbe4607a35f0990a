"""The one place that makes jraph 0.0.6.dev0 work with current jax.

jraph's `zero_out_padding` (and `get_fully_connected_graph`) still call `jax.tree_map`
and `jax.tree_leaves`, which jax removed. Importing `jraph` from here adds those two
names back as the `jax.tree_util` functions they were aliases of, only when missing, so
no other module patches anything. Import jraph as `from d2e2s_jax.data.jraph_compat
import jraph`.
"""

import jax
import jraph

for _name in ("tree_map", "tree_leaves"):
  if not hasattr(jax, _name):
    setattr(jax, _name, getattr(jax.tree_util, _name))

__all__ = ["jraph"]
