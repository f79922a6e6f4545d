"""dynshuffle.profiling.operators: kernel-launching operators per step, and the launch-lean targets."""
import pytest
import torch

from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.profiling.operators import count_operators, format_operator_rows, operator_report


def test_views_and_allocations_are_not_counted():
    x = torch.randn(4, 6)

    def fn():
        y = torch.empty_like(x)               # allocation only
        z = x.view(2, 12).t().reshape(-1)     # views (the reshape of a transpose copies: one clone)
        return torch.add(y.copy_(x), z.view(4, 6))

    counts = count_operators(fn)
    assert counts == {"clone": 1, "copy_": 1, "add": 1}


def test_a_generator_free_shuffle_module_in_eval_counts_its_exact_path():
    module = DynamicShuffle(24, 2).eval()
    x = torch.randn(2, 24, 3, 3)

    def forward():
        with torch.no_grad():
            module(x)

    counts = count_operators(forward)
    # The inference form: pool, linear (BatchNorm folded in), relu, the one head; argmax, the key (add),
    # sort; the inverse index (add, add); the scatter. No softmax: the argmax alone ranks the rows.
    assert sum(counts.values()) == 10
    assert counts["sort"] == 1 and counts["index_copy_"] == 1 and counts["argmax"] == 1 and "_softmax" not in counts


@pytest.fixture(scope="module")
def report():
    return {(r.variant, r.step): r for r in operator_report(batch=2)}


def test_report_rows_are_ratios_to_the_fixed_model(report):
    fixed = report["static", "eval"]
    assert fixed.ratio == 1.0 and fixed.per_module is None
    dynamic = report["dynamic", "eval"]
    assert dynamic.fixed_operators == fixed.operators and dynamic.shuffle_modules == 16
    assert dynamic.per_module == pytest.approx((dynamic.operators - fixed.operators) / 16)
    assert "| dynamic | eval |" in format_operator_rows(list(report.values()), markdown=True)


def test_launch_lean_layers_stay_within_their_operator_budgets(report):
    """Regression guard on the counts docs/performance.md reports (ShuffleNetV2 0.5x, CIFAR stem): the
    learned shuffle in eval is one index_select (its constant permutation is cached), and the dynamic
    module's excess per step stays at what the launch-lean paths measured."""
    assert report["learned", "eval"].operators == report["static", "eval"].operators
    assert report["dynamic", "eval"].per_module == 9 and report["dynamic", "eval"].ratio <= 1.8
    assert report["dynamic", "eval fused"].per_module == 9
    assert report["learned", "eval fused"].operators == report["static", "eval"].operators
    assert report["dynamic", "train ste"].per_module <= 41
    assert report["dynamic", "train soft"].per_module <= 37
