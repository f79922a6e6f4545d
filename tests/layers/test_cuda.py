"""CUDA correctness of the layers (skipped without a GPU): the same results as on the CPU."""
import pytest
import torch

from dynshuffle.layers import functional as DF
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.modes import set_shuffle_mode
from dynshuffle.layers.sds import StaticDynamicShuffle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("share", [True, False])
@pytest.mark.parametrize("mode", ["auto", "ste"])
def test_cuda_matches_cpu_forward_and_gradients(share, mode, randomize):
    cpu = randomize(DynamicShuffle(58, 2, share=share, mode=mode), scale=0.5).train()
    gpu = randomize(DynamicShuffle(58, 2, share=share, mode=mode), scale=0.5).train().cuda()
    x = torch.randn(6, 58, 5, 5)
    w = torch.randn(6, 58, 5, 5)
    xc = x.clone().requires_grad_(True)
    xg = x.cuda().requires_grad_(True)
    yc, yg = cpu(xc), gpu(xg)
    ((yc * w).sum() + cpu.orthogonality_penalty).backward()
    ((yg * w.cuda()).sum() + gpu.orthogonality_penalty).backward()
    torch.testing.assert_close(yg.cpu(), yc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-4)
    for (name, pc), pg in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_cuda_exact_path_and_collision_repair(randomize):
    module = randomize(DynamicShuffle(116, 2), scale=3.0).eval().cuda()
    x = torch.randn(16, 116, 7, 7, device="cuda")
    la, lb = module.logits(x)
    pa, pb = DF.binarize(la).squeeze(1), DF.binarize(lb).squeeze(1)
    expected = DF.kron_shuffle(x, DF.one_hot_permutation(pa), DF.one_hot_permutation(pb), 2)
    assert torch.equal(module(x), expected)
    perm = module.permutation(x)
    assert (perm.sort(1).values == torch.arange(116, device="cuda")).all()
    cpu_perm = module.cpu().permutation(x.cpu())
    assert torch.equal(perm.cpu(), cpu_perm)


def test_cuda_sds_and_learned_autocast():
    model = torch.nn.Sequential(StaticDynamicShuffle(48, 2), LearnedShuffle(48, 4)).cuda().train()
    x = torch.randn(4, 48, 8, 8, device="cuda")
    for mode in ("auto", "ste"):
        set_shuffle_mode(model, mode)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = model(x)
        y.float().square().mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
