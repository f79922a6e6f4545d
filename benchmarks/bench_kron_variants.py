"""Formulation alternatives of the Kronecker apply and the module paths, each against a 1x1 convolution.

Used to choose the implementation in dynshuffle.layers.functional.kron_shuffle; run on CPU with 2 threads.
"""
import argparse

if __name__ == "__main__":  # --help prints this and exits before anything is timed
    argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=" ".join(__doc__.splitlines()[2:]) + (
        " Times three ShuffleNetV2 stage shapes (C=116/232/464, batch 64); no options.")).parse_args()

import torch, sys, time, statistics
import torch.nn.functional as F
from dynshuffle import DynamicShuffle, StaticDynamicShuffle, set_shuffle_mode
from dynshuffle.layers import functional as DF
from dynshuffle.profiling.timing import time_pair
torch.manual_seed(0)
dev = torch.device("cpu")

def kron_v0(x, a, b, G):  # current
    return DF.kron_shuffle(x, a, b, G)

def kron_bfirst(x, a, b, G):
    n, c, h, w = x.shape; n1, n2 = a.shape[-1], b.shape[-1]; s = h*w
    z = x.reshape(n, G*n1, n2, s)
    t = torch.matmul(b.unsqueeze(1), z)                # (N, G*n1, n2, S)  B over n2
    t = t.view(n, G, n1, n2*s).transpose(1, 2).reshape(n, n1, G, n2, s)  # copy -> (N, n1, G, n2, S)
    # want (N, n1, n2, G, S)
    t = t.transpose(2, 3).reshape(n, n1, n2*G*s)
    y = torch.bmm(a, t)
    return y.view(n, c, h, w)

def kron_einsum(x, a, b, G):
    n, c, h, w = x.shape; n1, n2 = a.shape[-1], b.shape[-1]
    z = x.reshape(n, G, n1, n2, h*w)
    return torch.einsum("nik,njl,ngkls->nijgs", a, b, z).reshape(n, c, h, w)

def kron_shuffle_first(x, a, b, G):
    # shuffle input first (commutes with shared blockdiag), then one bmm per step in final layout
    n, c, h, w = x.shape; n1, n2 = a.shape[-1], b.shape[-1]; s = h*w
    xs = x.view(n, G, n1*n2, s).transpose(1, 2).reshape(n, n1, n2 * G * s)   # (N, n1, n2, G, S)
    t = torch.bmm(a, xs)                                                     # A over n1
    y = torch.matmul(b.unsqueeze(1), t.view(n, n1, n2, G * s))               # B over n2
    return y.view(n, c, h, w)

def mk_step(fn, x, a, b, G, g):
    def step():
        for t in (x, a, b): t.grad = None
        fn(x, a, b, G).backward(g)
    return step

def report(name, c, base):
    print(f"{name:40s} {c*1e3:8.2f} ms  base {base*1e3:8.2f}  ratio {c/base:.3f}", flush=True)

for C, S, N in [(116, 28, 64), (232, 14, 64), (464, 7, 64)]:
    print(f"== C={C} S={S} N={N}")
    x = torch.randn(N, C, S, S, requires_grad=True); g = torch.randn_like(x)
    n1, n2 = DF.factorize(C // 2)
    a = torch.softmax(torch.randn(N, n1, n1), -1).requires_grad_(True)
    b = torch.softmax(torch.randn(N, n2, n2), -1).requires_grad_(True)
    conv = torch.nn.Conv2d(C, C, 1, bias=False)
    def conv_step():
        x.grad = None; conv.weight.grad = None
        conv(x).backward(g)
    ref = kron_v0(x, a, b, 2)
    for fn in (kron_bfirst, kron_einsum, kron_shuffle_first):
        torch.testing.assert_close(fn(x, a, b, 2), ref, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        for fn in (kron_v0, kron_bfirst, kron_einsum, kron_shuffle_first):
            cand, base = time_pair(lambda: fn(x, a, b, 2), lambda: conv(x), dev, repeats=5)
            report("fwd " + fn.__name__, cand, base)
    for fn in (kron_v0, kron_bfirst, kron_einsum, kron_shuffle_first):
        cand, base = time_pair(mk_step(fn, x, a, b, 2, g), conv_step, dev, repeats=5)
        report("fwd+bwd " + fn.__name__, cand, base)
    for mode in ("ste", "soft"):
        m = DynamicShuffle(C, 2).train(); set_shuffle_mode(m, mode)
        def st(m=m):
            x.grad = None
            for p in m.parameters(): p.grad = None
            m(x).backward(g)
        cand, base = time_pair(st, conv_step, dev, repeats=5); report("module " + mode, cand, base)
    m = DynamicShuffle(C, 2).eval(); sh = torch.nn.ChannelShuffle(2)
    with torch.no_grad():
        cand, base = time_pair(lambda: m(x), lambda: sh(x), dev, repeats=5); report("module exact vs shuffle", cand, base)
    for impl in ("dense", "factored"):
        sds = StaticDynamicShuffle(C, 2, mixing_impl=impl)
        sds.eval()
        with torch.no_grad():
            cand, base = time_pair(lambda: sds(x), lambda: conv(x), dev, repeats=5); report("sds eval " + impl, cand, base)
        sds.train()
        def st2(m=sds):
            x.grad = None
            for p in m.parameters(): p.grad = None
            m(x).backward(g)
        cand, base = time_pair(st2, conv_step, dev, repeats=5); report("sds fwd+bwd " + impl, cand, base)
