"""dynshuffle.training.evaluate: both evaluation modes, the data-dependence figures and the latency."""
import statistics

import pytest
import torch

from dynshuffle.layers.base import shuffle_modules
from dynshuffle.models.registry import create_model
from dynshuffle.training import evaluate as E
from dynshuffle.training.evaluate import (dynamic_dependence, evaluate, evaluate_modes, measure_latencies,
                                         measure_latency)


def test_evaluate_modes_restores_each_module_mode():
    """Regression: evaluate_modes used to leave every module in "hard", so a model returned by train()
    went on training with exact permutations instead of the mode it had."""
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic")
    modules = list(shuffle_modules(model))
    for i, m in enumerate(modules):
        m.mode = ("auto", "soft", "ste")[i % 3]
    before = [m.mode for m in modules]
    batches = [(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (4,)))]
    result = evaluate_modes(model, batches, lambda x: x.float() / 255, torch.device("cpu"))
    assert result["hard"]["count"] == 4 and result["soft"]["count"] == 4
    assert [m.mode for m in modules] == before



def test_evaluate_modes_is_the_exact_and_the_soft_evaluation(random_generators):
    model = random_generators(create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic"),
                              scale=0.5, size=32)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=gen), torch.arange(6) % 10)]
    transform = lambda x: x.float() / 255  # noqa: E731
    result = evaluate_modes(model, batches, transform, torch.device("cpu"))
    for mode, key in (("frozen", "hard"), ("soft", "soft")):
        for m in shuffle_modules(model):
            m.mode = mode
        expected = evaluate(model, batches, transform, torch.device("cpu"))
        assert {k: v for k, v in result[key].items() if k != "seconds"} == \
            {k: v for k, v in expected.items() if k != "seconds"}
    static = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar")
    assert evaluate_modes(static, batches, transform, torch.device("cpu"))["soft"] is None


def test_dynamic_dependence_counts_the_layers_off_their_most_common_permutation(random_generators):
    model = random_generators(create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic"),
                              scale=3.0, size=32)
    images = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    from dynshuffle.inspection.stats import permutation_stats

    stats = permutation_stats(model, images, keep_permutations=True)
    off, distinct = [], []
    for s in stats.values():
        _, counts = torch.unique(s["permutations"], dim=0, return_counts=True)
        off.append(1 - counts.max().item() / 40)
        distinct.append(len(counts))
    result = dynamic_dependence(model, images)
    assert result["dynamic_layers"] == sum(f >= 0.05 for f in off) and result["layers"] == 16
    assert result["distinct_median"] == statistics.median(distinct)
    assert result["dynamic_layers"] > 0  # random generators: the figure counts something
    assert dynamic_dependence(create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar"), images) is None


def test_measure_latency_times_the_deployed_model_and_leaves_it_alone(monkeypatch):
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic").train()
    seen = []

    def fake_median_time(fn, device, warmup, runs):
        seen.append((fn().shape, model.training, [m.mode for m in shuffle_modules(model)], warmup, runs))
        return 0.0123

    monkeypatch.setattr(E, "median_time", fake_median_time)
    assert measure_latency(model, (2, 3, 32, 32), warmup=3, runs=7) == pytest.approx(12.3)
    assert seen == [((2, 10), False, ["frozen"] * 16, 3, 7)]
    assert model.training and all(m.mode == "auto" for m in shuffle_modules(model))


def test_measure_latencies_times_every_deployed_model_in_turn_as_ratios_to_the_baseline(monkeypatch):
    fixed = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="static")
    dynamic = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", shuffle="dynamic").train()
    seen = []

    def fake_time_interleaved(fns, device, warmup, repeats, min_time):
        seen.append((sorted(fns), torch.get_num_threads(), dynamic.training,
                     {m.mode for m in shuffle_modules(dynamic)}, repeats, [fn().shape for fn in fns.values()]))
        return {"static": 0.002, "dynamic": 0.005}

    monkeypatch.setattr(E, "time_interleaved", fake_time_interleaved)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        times = measure_latencies({"static": fixed, "dynamic": dynamic}, (1, 3, 32, 32), "static", threads=1,
                                  repeats=9)
        assert torch.get_num_threads() == 2  # the thread setting is restored
    finally:
        torch.set_num_threads(threads)
    assert seen == [(["dynamic", "static"], 1, False, {"frozen"}, 9, [(1, 10), (1, 10)])]  # one call: in turn
    assert times == {"static": {"ms": pytest.approx(2.0), "ratio": 1.0},
                     "dynamic": {"ms": pytest.approx(5.0), "ratio": pytest.approx(2.5)}}
    assert dynamic.training and all(m.mode == "auto" for m in shuffle_modules(dynamic))
    with pytest.raises(ValueError, match="baseline 'fixed' is not one of the models"):
        measure_latencies({"static": fixed}, (1, 3, 32, 32), "fixed")
