"""dynshuffle.models.registry: names, patterns, one visible definition per model, recorded configs."""
from __future__ import annotations

import inspect
import json

import pytest
from torch import nn

from dynshuffle.models import registry, shufflenet_v1, shufflenet_v2
from dynshuffle.models.registry import create_model, list_models, model_from_config, register_model
from dynshuffle.models.shufflenet_v1 import ShuffleNetV1


def test_registry_names_and_patterns():
    names = list_models()
    assert {"shufflenet_v2_x0_5", "shufflenet_v2_x0_625", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"} <= set(names)
    assert names == sorted(names)
    assert list_models("shufflenet_v2_*") == ["shufflenet_v2_x0_5", "shufflenet_v2_x0_625", "shufflenet_v2_x1_0",
                                               "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    assert all(n.startswith("shufflenet_v1_g3_") for n in list_models("shufflenet_v1_g3_*"))
    assert list_models("nothing*") == []


def test_every_registered_model_is_a_visible_definition():
    # One `def <name>` per registered model (as timm does): searching the source for a name finds it,
    # and the function is the module attribute of that name, not a factory made in a loop.
    names = list_models("shufflenet_*")
    assert len(names) == 24
    for name in names:
        module = shufflenet_v1 if name.startswith("shufflenet_v1") else shufflenet_v2
        fn = getattr(module, name)
        assert fn.__name__ == name and fn.__module__ == module.__name__
        assert f"def {name}(" in inspect.getsource(module)
        assert name in module.__all__
        built = create_model(name, num_classes=10, stem="cifar")
        assert built.config["name"] == name
    with pytest.raises(ValueError, match="groups 3"):
        create_model("shufflenet_v1_g3_x1_0", groups=8)
    assert create_model("shufflenet_v1_g8_x0_5", groups=8, width=0.5).groups == 8


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match="shufflenet_v2_x1_0") as err:
        create_model("shufflenet_v2_x1_O")
    assert "unknown model" in str(err.value)
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        create_model("resnet50")


def test_create_model_records_config_and_rebuilds():
    m = create_model("shufflenet_v1_g3_x0_5", shuffle="dynamic", stem="cifar", num_classes=10, hidden=6)
    assert m.config["name"] == "shufflenet_v1_g3_x0_5"
    assert m.config["groups"] == 3 and m.config["width"] == 0.5 and m.config["hidden"] == 6
    rebuilt = model_from_config(json.loads(json.dumps(m.config)))  # as a checkpoint's metadata stores it
    assert type(rebuilt) is ShuffleNetV1 and rebuilt.config == m.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}
    with pytest.raises(ValueError, match="width"):
        create_model("shufflenet_v2_x1_0", width=0.5)
    assert create_model("shufflenet_v2_x0_5", width=0.5).width == 0.5


def test_register_model_decorator(monkeypatch):
    # A private copy of the registry: the test's model must not outlive it (`dynshuffle models` lists all).
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model(name="_test_tiny_net")
    def _factory(num_classes: int = 4):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))

    m = create_model("_test_tiny_net", num_classes=2)
    assert m.config == {"name": "_test_tiny_net", "num_classes": 2}
    assert "_test_tiny_net" in list_models("_test_*")
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda: None, name="_test_tiny_net")
