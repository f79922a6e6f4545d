"""dynshuffle.layers.modes: set_shuffle_mode, shuffle_mode (switch and restore) and deploy_mode."""
import pytest
import torch
from torch import nn

from dynshuffle.layers.base import shuffle_modules
from dynshuffle.layers.dynamic import DynamicShuffle
from dynshuffle.layers.learned import LearnedShuffle
from dynshuffle.layers.modes import deploy_mode, set_shuffle_mode, shuffle_mode
from dynshuffle.layers.sds import StaticDynamicShuffle


def _model() -> nn.Module:
    return nn.Sequential(DynamicShuffle(8, 2, mode="soft"), nn.BatchNorm2d(8), LearnedShuffle(8, 2, mode="ste"),
                         StaticDynamicShuffle(8, 2))


def _modes(model):
    return [m.mode for m in shuffle_modules(model)]


def test_set_shuffle_mode_switches_every_module_for_good():
    model = _model()
    assert set_shuffle_mode(model, "frozen") is model
    assert _modes(model) == ["frozen"] * 3
    with pytest.raises(ValueError, match="shuffle mode must be one of"):
        set_shuffle_mode(model, "hard")
    assert _modes(model) == ["frozen"] * 3


def test_shuffle_mode_switches_and_restores_each_module():
    model = _model().train()
    before = _modes(model)
    assert before == ["soft", "ste", "auto"]
    with shuffle_mode(model, "frozen") as m:
        assert m is model
        assert _modes(model) == ["frozen"] * 3
        assert model.training  # train/eval untouched unless asked
    assert _modes(model) == before


def test_shuffle_mode_restores_on_exception_training_flags_and_penalties():
    model = _model().train()
    model(torch.randn(2, 8, 3, 3))
    penalties = [m.orthogonality_penalty for m in shuffle_modules(model)]
    assert penalties[0] is not None
    model[1].eval()  # mixed flags must come back one by one
    flags = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with shuffle_mode(model, "soft", training=False):
            assert not any(m.training for m in model.modules())
            assert _modes(model) == ["soft"] * 3
            model(torch.randn(2, 8, 3, 3))  # records new penalties inside the block
            raise RuntimeError("boom")
    assert _modes(model) == ["soft", "ste", "auto"]
    assert [m.training for m in model.modules()] == flags
    assert all(m.orthogonality_penalty is p for m, p in zip(shuffle_modules(model), penalties))


def test_shuffle_mode_nested_and_bad_mode():
    model = _model()
    with shuffle_mode(model, "frozen"):
        with shuffle_mode(model, "soft"):
            assert _modes(model) == ["soft"] * 3
        assert _modes(model) == ["frozen"] * 3
    assert _modes(model) == ["soft", "ste", "auto"]
    with pytest.raises(ValueError, match="shuffle mode"):
        with shuffle_mode(model, "exact"):
            pass
    assert _modes(model) == ["soft", "ste", "auto"]


def test_deploy_mode_is_eval_and_exact_permutations():
    model = _model().train()
    x = torch.randn(2, 8, 3, 3)
    with deploy_mode(model), torch.no_grad():
        assert not model.training and _modes(model) == ["frozen"] * 3
        out = model(x)
    assert model.training and _modes(model) == ["soft", "ste", "auto"]
    model.eval()  # in eval every path but "soft" is the exact permutation: the deployed model is this one
    for m in shuffle_modules(model):
        m.mode = "auto"
    with torch.no_grad():
        assert torch.equal(out, model(x))
