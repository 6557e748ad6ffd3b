"""Training and rollout layouts of the same parameters, and the resharding between them."""

import jax
import numpy as np

from reason_jax.models import tiny_llama
from reason_jax.sharding import make_mesh
from reason_jax.run.policy import Policy


def test_rollout_layout_drops_fsdp_and_keeps_tensor():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    policy = Policy(tiny_llama(24, dim=32, mlp_dim=64, head_dim=16, num_layers=1), mesh)
    params = policy.init_params(0)
    rollout, seconds = policy.to_rollout(params)
    assert seconds >= 0
    q_train = params["layers"][0]["attn"]["q_DQH"]
    q_roll = rollout["layers"][0]["attn"]["q_DQH"]
    assert "fsdp" in q_train.sharding.spec and "tensor" in q_train.sharding.spec
    assert "fsdp" not in q_roll.sharding.spec and "tensor" in q_roll.sharding.spec
    for leaf in jax.tree.leaves(rollout):
        assert "fsdp" not in [a for a in leaf.sharding.spec if a]
    # Same values, only placed differently.
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(rollout)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
