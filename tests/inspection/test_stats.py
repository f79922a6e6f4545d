"""dynshuffle.inspection.stats: permutation_stats (the numbers) and the matrices behind them; looking is
read-only."""
import itertools
import math

import numpy as np
import pytest
import torch

from dynshuffle.inspection.stats import (NoShuffleModulesError, collect_inputs, hard_full_matrix, matrices_for_inputs,
                                         permutation_stats, soft_full_matrix)
from dynshuffle.layers import functional as DF
from dynshuffle.layers.base import initial_logit
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.models.registry import create_model


def test_fresh_dynamic_model_gives_the_fixed_shuffle_everywhere(images, initial_penalty):
    model = create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10, shuffle="dynamic")
    stats = permutation_stats(model, images(6, size=32), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert len(stats) == 16
    for s in stats.values():
        assert s["kind"] == "dynamic" and s["samples"] == 6
        assert s["fixed_fraction"] == 1.0 and s["fixed_channel_agreement"] == 1.0
        assert s["agreement"] == 1.0 and s["distinct"] == 1
        np.testing.assert_allclose(s["class_agreement"], np.ones((3, 3)))
        assert list(s["classes"]) == [0, 1, 2]
        # The models' initial confidence 0.9 puts 1/n + 0.9 (1 - 1/n) on the diagonal: near, not at, a
        # permutation, with the penalty of that matrix.
        assert s["row_max_a"] == pytest.approx(1 / s["n1"] + 0.9 * (1 - 1 / s["n1"]), abs=1e-4)
        assert s["row_max_b"] == pytest.approx(1 / s["n2"] + 0.9 * (1 - 1 / s["n2"]), abs=1e-4)
        assert s["penalty"] == pytest.approx(initial_penalty(s["n1"], 0.9) + initial_penalty(s["n2"], 0.9), rel=1e-5)
        # Every row's winner is its diagonal, by the initial logit, and no input moves a score (heads at 0).
        margins = torch.tensor([initial_logit(s["n1"], 0.9)] * s["n1"] + [initial_logit(s["n2"], 0.9)] * s["n2"])
        assert s["stable_rows"] == 1.0 and s["score_spread"] == 0.0 and s["margin_in_spreads"] == math.inf
        assert s["margin"] == pytest.approx(float(margins.median()), rel=1e-5)
    assert model.training  # the model's mode is restored (it was built in train mode)


def test_random_generators_give_input_dependent_permutations(user_net, images):
    model = user_net()
    x = images(24)
    labels = torch.arange(24) % 3
    stats = permutation_stats(model, x, labels, batch_size=10)
    assert list(stats) == ["shared", "body.2", "learned", "sds.dynamic"]  # in the model's order
    for name, s in stats.items():
        assert s["min_row_max_a"] <= s["row_max_a"] and s["min_row_max_b"] <= s["row_max_b"]
        m = s["class_agreement"]
        assert m.shape == (3, 3) and np.allclose(m, m.T)
    assert [stats[n]["groups"] for n in stats] == [2, 3, 2, 2] and stats["body.2"]["kind"] == "dynamic"
    assert stats["learned"]["distinct"] == 1 and stats["learned"]["agreement"] == 1.0
    assert stats["learned"]["kind"] == "learned"
    assert stats["shared"]["agreement"] < 1 and stats["shared"]["distinct"] > 1
    assert stats["body.2"]["agreement"] < 1


def test_stats_agree_with_module_permutation_and_penalty(user_net, images):
    model = user_net(seed=1)
    x, labels = images(12, seed=3), torch.tensor([0, 1, 2, 3] * 3)
    stats = permutation_stats(model, x, labels, keep_permutations=True)
    inputs = collect_inputs(model, x)
    for name, module in [("shared", model.shared), ("body.2", model.body[2]), ("sds.dynamic", model.sds.dynamic)]:
        perms = module.permutation(inputs[name])
        assert torch.equal(stats[name]["permutations"], perms)
        fixed = DF.channel_shuffle_index(12, module.groups)
        assert stats[name]["distinct"] == len({tuple(p.tolist()) for p in perms})
        assert stats[name]["fixed_fraction"] == pytest.approx(float((perms == fixed).all(1).float().mean()))
        # Brute-force pairwise agreement, overall and per class.
        pairs = [(i, j) for i, j in itertools.combinations(range(12), 2)]
        brute = np.mean([float((perms[i] == perms[j]).float().mean()) for i, j in pairs])
        assert stats[name]["agreement"] == pytest.approx(brute)
        for a, b in [(0, 0), (0, 1), (2, 3)]:
            pa = [i for i in range(12) if labels[i] == a]
            pb = [j for j in range(12) if labels[j] == b]
            vals = [float((perms[i] == perms[j]).float().mean()) for i in pa for j in pb if i != j]
            assert stats[name]["class_agreement"][a, b] == pytest.approx(np.mean(vals))
        # The penalty is the module's own orthogonality penalty of a soft forward on the same input.
        old = module.mode
        module.mode = "soft"
        with torch.no_grad():
            module(inputs[name])
        module.mode = old
        assert stats[name]["penalty"] == pytest.approx(float(module.orthogonality_penalty), rel=1e-5)
        a, b = module.soft_matrices(inputs[name])
        assert stats[name]["row_max_a"] == pytest.approx(float(a.amax(-1).mean()), rel=1e-5)
        # Margins from the module's scores: per row, its smallest top-two gap and its largest score std.
        with torch.no_grad():
            factors = [f.flatten(1, -2) for f in module.scaled_logits(inputs[name])]  # (N, rows, n): A, B
        gap = torch.cat([f.topk(2, -1).values.diff(dim=-1).neg().squeeze(-1).amin(0) for f in factors])
        spread = torch.cat([f.std(0, correction=0).amax(-1) for f in factors])
        winners = [f.argmax(-1) for f in factors]
        stable = torch.cat([(w == w[:1]).all(0) for w in winners])
        assert stats[name]["margin"] == pytest.approx(float(gap.median()), rel=1e-5)
        assert stats[name]["score_spread"] == pytest.approx(float(spread.median()), rel=1e-5)
        assert stats[name]["margin_in_spreads"] == pytest.approx(float((gap / spread).median()), rel=1e-5)
        assert stats[name]["stable_rows"] == pytest.approx(float(stable.float().mean()))


def test_single_sample_class_and_single_image(user_net, images):
    model = user_net()
    stats = permutation_stats(model, images(3), torch.tensor([0, 0, 1]))
    s = stats["shared"]
    assert math.isnan(s["class_agreement"][1, 1]) and not math.isnan(s["class_agreement"][0, 0])
    one = permutation_stats(model, images(1))
    assert math.isnan(one["shared"]["agreement"]) and one["shared"]["distinct"] == 1


def test_full_matrices_match_the_module(user_net, images, random_generators, exact_factors):
    """soft_full_matrix is the C x C map the soft path applies; with binarized factors it is the permutation."""
    for module in (random_generators(DynamicShuffle(12, 2), calibrate=False),
                   random_generators(DynamicShuffle(12, 3, share=False), calibrate=False)):
        x = torch.randn(2, 12, 3, 3)
        a, b = module.soft_matrices(x)
        soft = soft_full_matrix(a[0], b[0], module.groups)
        expected = DF.kron_shuffle(x[:1], a[:1], b[:1], module.groups)
        assert torch.allclose(torch.einsum("oc,nchw->nohw", soft, x[:1]), expected, atol=1e-5)
        a_exact, b_exact = exact_factors(module, x)
        hard = soft_full_matrix(a_exact[0], b_exact[0], module.groups)
        assert torch.equal(hard, hard_full_matrix(module.permutation(x)[0]))
    model = user_net()
    mats = matrices_for_inputs(model, images(2))
    inputs = collect_inputs(model, images(2))
    for name, m in mats.items():
        module = model.get_submodule(name)
        a, b = module.soft_matrices(inputs[name])
        assert torch.equal(m["a"], a) and torch.equal(m["b"], b)
        assert torch.equal(m["perm"], module.permutation(inputs[name]))
        for i in range(2):
            assert torch.equal(m["soft"][i], soft_full_matrix(a[i], b[i], module.groups))
            assert torch.equal(m["hard"][i], hard_full_matrix(m["perm"][i]))
    assert mats["body.2"]["a"].shape == (2, 3, 2, 2)  # per-group factors keep their group axis


def test_bad_input(user_net, images):
    with pytest.raises(NoShuffleModulesError, match="no dynamic or learned shuffle"):
        permutation_stats(create_model("shufflenet_v2_x0_5", stem="cifar", num_classes=10), images(2, size=32))
    model = user_net()
    with pytest.raises(ValueError, match="float tensor"):
        permutation_stats(model, images(2).to(torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        permutation_stats(model, images(2), torch.tensor([0, 1, 2]))



def _read_only_helpers():
    """Every helper that looks at a model: (name, call(model, images))."""
    from dynshuffle.profiling.counting import count_flops, count_macs, peak_activation_bytes, profile
    from dynshuffle.training.evaluate import dynamic_dependence, measure_latency

    return [
        ("permutation_stats", lambda m, x: permutation_stats(m, x, torch.arange(len(x)) % 2)),
        ("permutation_stats soft", lambda m, x: permutation_stats(m, x, mode="soft")),
        ("matrices_for_inputs", lambda m, x: matrices_for_inputs(m, x[:2])),
        ("collect_inputs", lambda m, x: collect_inputs(m, x)),
        ("dynamic_dependence", lambda m, x: dynamic_dependence(m, x)),
        ("measure_latency", lambda m, x: measure_latency(m, (2, 3, 8, 8), warmup=1, runs=2)),
        ("profile", lambda m, x: profile(m, 8, batch=2)),
        ("count_macs", lambda m, x: count_macs(m, 8)),
        ("count_flops", lambda m, x: count_flops(m, 8)),
        ("peak_activation_bytes", lambda m, x: peak_activation_bytes(m, 8, 2)),
    ]


@pytest.mark.parametrize("name,call", _read_only_helpers(), ids=[n for n, _ in _read_only_helpers()])
def test_looking_at_a_model_in_training_mode_changes_nothing(name, call, user_net, images):
    """The state dict (BatchNorm running statistics and counters included), every train flag, every mode and
    every module's last penalties are what they were, for a model handed over in training mode."""
    from dynshuffle.layers.base import shuffle_modules

    model = user_net().train()
    model.shared.mode = "soft"
    model(images(4))  # a training forward: the modules hold their penalties of it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    kept = [(m.mode, m.orthogonality_penalty, m.diversity_reward) for m in shuffle_modules(model)]
    call(model, images(6))
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed
    assert [m.training for m in model.modules()] == flags
    assert all(m.mode == mode and m.orthogonality_penalty is penalty and m.diversity_reward is reward
               for m, (mode, penalty, reward) in zip(shuffle_modules(model), kept))
