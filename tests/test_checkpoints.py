"""dynshuffle.checkpoints: state-dict compatibility (a fixed-shuffle checkpoint upgraded to a learned or
dynamic model), and checkpoints written before a rename still load."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from dynshuffle.checkpoints import (RENAMED_TENSORS, build_model_from_checkpoint, load_compatible_state_dict,
                                    load_model_weights, load_weights, save_weights)
from dynshuffle.models.registry import create_model
from dynshuffle.models.shufflenet_v1 import ShuffleNetV1
from dynshuffle.models.shufflenet_v2 import ShuffleNetV2


@pytest.mark.parametrize("target", ["dynamic", "learned"])
@pytest.mark.parametrize("arch", ["v2", "v1"])
def test_static_checkpoint_upgrades_to_identical_model(arch, target, warm_bn):
    def build(shuffle):
        if arch == "v2":
            return ShuffleNetV2(0.5, 10, stem="cifar", shuffle=shuffle)
        return ShuffleNetV1(3, 0.25, 10, stem="cifar", shuffle=shuffle)

    torch.manual_seed(0)
    static = build("static")
    warm_bn(static, 32)
    upgraded = load_compatible_state_dict(build(target), static.state_dict())
    static.eval()
    upgraded.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(static(x), upgraded(x))


def test_load_compatible_state_dict_errors():
    static = ShuffleNetV2(0.5, 10, stem="cifar")
    dynamic = ShuffleNetV2(0.5, 10, stem="cifar", shuffle="dynamic")
    with pytest.raises(ValueError, match=r"unexpected keys: .*shuffle\.generator"):
        load_compatible_state_dict(ShuffleNetV2(0.5, 10, stem="cifar"), dynamic.state_dict())
    state = static.state_dict()
    del state["stage3.1.branch2.4.running_var"]
    with pytest.raises(ValueError, match=r"missing keys.*stage3\.1\.branch2\.4\.running_var"):
        load_compatible_state_dict(dynamic, state)
    with pytest.raises(ValueError, match=r"fc\.weight: checkpoint \(10, 1024\) vs model \(7, 1024\)"):
        load_compatible_state_dict(ShuffleNetV2(0.5, 7, stem="cifar", shuffle="dynamic"), static.state_dict())
    # a DataParallel/DDP prefix is accepted
    prefixed = {"module." + k: v for k, v in static.state_dict().items()}
    load_compatible_state_dict(ShuffleNetV2(0.5, 10, stem="cifar", shuffle="learned"), prefixed)



def _as_written_before_the_renames(model, path, layer_options=None):
    """`model`'s weights in a safetensors file as an earlier version wrote them: the learned mixing of every
    SDS under its old names (`static_u`, `static_v`), and the layer options of `model_config` too."""
    old_names = {new: old for old, new in RENAMED_TENSORS.items()}
    tensors = {}
    for key, value in model.state_dict().items():
        head, dot, last = key.rpartition(".")
        tensors[head + dot + old_names.get(last, last)] = value.contiguous()
    config = dict(model.config)
    if layer_options is not None:
        config["layer_options"] = layer_options
    save_file(tensors, str(path), metadata={"epoch": "3", "model_config": json.dumps(config)})
    return tensors


def test_weights_saved_under_the_old_sds_names_still_load(tmp_path, warm_bn):
    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", pointwise="sds",
                         layer_options={"initial_confidence": 0.3})
    warm_bn(model, 32)
    old = _as_written_before_the_renames(model, tmp_path / "last.safetensors", layer_options={"confidence": 0.3})
    assert any(k.endswith(".static_u") for k in old) and not any(k.endswith(".mixing_u") for k in old)

    tensors, meta = load_weights(tmp_path / "last.safetensors")
    assert tensors.keys() == model.state_dict().keys()
    assert meta["model_config"]["layer_options"] == {"initial_confidence": 0.3}
    rebuilt, _ = build_model_from_checkpoint(tmp_path / "last.safetensors")
    assert rebuilt.config == {**model.config, "layer_options": {"initial_confidence": 0.3}}
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    fresh = create_model("shufflenet_v2_x0_5", num_classes=10, stem="cifar", pointwise="sds")
    load_compatible_state_dict(fresh, old)  # a state dict read from an old file directly
    load_model_weights(fresh, tensors, "last.safetensors")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_weights_saved_with_a_head_per_factor_still_load(tmp_path, warm_bn):
    """An earlier generator had two heads, `head_a` for A's rows and `head_b` for B's; its one head holds
    both, A's first."""
    torch.manual_seed(0)
    model = create_model("shufflenet_v1_g3_x0_5", num_classes=10, stem="cifar", shuffle="dynamic")
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("generator.head"):
                module.weight.normal_(0, 0.5)  # input-dependent scores: a wrong merge changes permutations
    warm_bn(model, 32)
    tensors = {}
    for key, value in model.state_dict().items():
        module, _, param = key.rpartition(".")
        if module.endswith("generator.head"):
            generator = model.get_submodule(module.rpartition(".")[0])
            split = generator.heads * generator.n1 * generator.n1
            tensors[f"{module}_a.{param}"], tensors[f"{module}_b.{param}"] = value[:split], value[split:]
        else:
            tensors[key] = value
    old = tmp_path / "last.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(old),
              metadata={"epoch": "3", "model_config": json.dumps(model.config)})
    rebuilt, _ = build_model_from_checkpoint(old)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_new_checkpoints_round_trip(tmp_path):
    model = create_model("shufflenet_v1_g3_x0_25", num_classes=10, stem="cifar", pointwise="sds")
    save_weights(model, tmp_path / "w.safetensors", metadata={"model_config": model.config, "epoch": "1"})
    tensors, meta = load_weights(tmp_path / "w.safetensors")
    assert meta == {"model_config": {**model.config, "name": "shufflenet_v1_g3_x0_25"}, "epoch": "1"}
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
