"""dynshuffle.layers.fused: `fuse_for_inference` returns a new, fused module and leaves its argument as it was,
trainable (the README's example)."""
import torch
from torch import nn

import dynshuffle
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.fused import FusedDynamicShuffle, fuse_for_inference


def test_fuse_returns_a_new_module_and_the_argument_keeps_training():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(16, 16, 1, groups=4), DynamicShuffle(16, groups=4), DynamicShuffle(16, 2))
    block[2] = block[1]  # a module used twice stays shared in the copy
    before = {k: v.clone() for k, v in block.state_dict().items()}
    x = torch.randn(4, 16, 5, 5)
    with dynshuffle.deploy_mode(block):
        expected = block(x)

    deployed = fuse_for_inference(block.train())
    assert dynshuffle.fuse_for_inference is fuse_for_inference  # the package's name for it
    assert deployed is not block and type(deployed[1]) is FusedDynamicShuffle and deployed[1] is deployed[2]
    assert not deployed.training
    torch.testing.assert_close(deployed(x), expected)
    # the argument: same module types, same weights, still in training mode, and it trains
    assert type(block[1]) is DynamicShuffle and block.training
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    assert not any(p is q for p in block.parameters() for q in deployed.parameters())
    block(x).square().mean().backward()
    assert all(p.grad is not None for p in block[0].parameters())


def test_a_lone_shuffle_module_gives_its_fused_form_and_stays():
    module = DynamicShuffle(12, 2).train()
    fused = fuse_for_inference(module)
    assert type(fused) is FusedDynamicShuffle and type(module) is DynamicShuffle and module.training
