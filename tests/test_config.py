"""Training config: YAML loading, `--set` overrides, strict keys and types, the generated recipes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dynshuffle.training.config import Config, apply_overrides, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, data) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_yaml_and_overrides(tmp_path):
    path = _write(tmp_path, {"optim": {"lr": 0.05, "weight_decay": "4e-5"}, "shuffle": {"lambda": 2},
                             "model": {"factors": [2, 3]}})
    cfg = load_config(path, ["optim.lr=0.2", "model.name=shufflenet_v2_x1_0", "train.epochs=3",
                             "optim.nesterov=false", "model.stem=null", "data.eval_batch_size=~"])
    assert cfg.optim.lr == 0.2 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 4e-5  # PyYAML reads 4e-5 as a string: accepted for a float key
    assert cfg.shuffle.lambda_ == 2.0 and isinstance(cfg.shuffle.lambda_, float)
    assert cfg.model.name == "shufflenet_v2_x1_0" and cfg.model.factors == [2, 3]
    assert cfg.train.epochs == 3 and cfg.optim.nesterov is False and cfg.model.stem is None
    assert cfg.optim.momentum == 0.9  # untouched default


def test_resolved_config_round_trips(tmp_path):
    cfg = apply_overrides(Config(), ["shuffle.lambda=0.5", "model.factors=[4, 6]"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert "lambda: 0.5" in text
    again = load_config(tmp_path / "config.yaml")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("data, needle", [
    ({"optim": {"lrr": 0.1}}, "'optim.lrr'.*did you mean 'optim.lr'"),
    ({"optimizer": {"lr": 0.1}}, "unknown config section 'optimizer'"),
    ({"optim": 0.1}, "config section 'optim'"),
])
def test_unknown_keys_in_yaml_are_named(tmp_path, data, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize("data, needle", [
    ({"optim": {"lr": "fast"}}, r"'optim.lr': expected float, got 'fast'"),
    ({"train": {"epochs": 2.5}}, r"'train.epochs': expected int, got 2.5"),
    ({"optim": {"nesterov": "yes please"}}, r"'optim.nesterov': expected bool"),
    ({"model": {"hidden": "x"}}, r"'model.hidden': expected int or null"),
    ({"model": {"factors": 3}}, r"'model.factors': expected list of int or null"),
    ({"model": {"shuffle": "sometimes"}}, r"'model.shuffle': 'sometimes' is not one of"),
    ({"train": {"epochs": 0}}, r"'train.epochs': must be >= 1"),
    ({"shuffle": {"ste_fraction": 1.5}}, r"'shuffle.ste_fraction': must be in \[0, 1\]"),
    ({"train": {"epochs": True}}, r"'train.epochs': expected int"),
    ({"train": {"resume": True}}, r"'train.resume': expected str or null, got True"),
])
def test_wrong_types_in_yaml_name_key_and_type(tmp_path, data, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize("override, needle", [
    ("optim.lr=abc", r"'optim.lr': expected float, got 'abc'"),
    ("optim.lrr=0.1", r"unknown config key 'optim.lrr'"),
    ("train.epochs=1.5", r"'train.epochs': expected int"),
    ("lr=0.1", r"expected 'section.key'"),
    ("optim.lr", r"expected key=value"),
    ("train.amp=fp8", r"'train.amp': 'fp8' is not one of"),
    ("train.device=tpu", r"'train.device': must be auto, cpu, cuda or cuda:N"),
    ("train.resume=always", r"'train.resume': 'always' is not one of auto"),
    ("train.dist_timeout=0", r"'train.dist_timeout': must be > 0 \(seconds\), got 0.0"),
    ("data.skip_corrupt=maybe", r"'data.skip_corrupt': expected bool, got 'maybe'"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides(Config(), [override])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_generated_recipes_are_current_and_load():
    result = subprocess.run([sys.executable, str(ROOT / "configs" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    files = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(files) == 4 * 3 * 4 + 3 * 4 + 4  # 4 datasets x 3 models, Fashion-MNIST x 3 models, digits
    for path in files:
        cfg = load_config(path)
        assert cfg.shuffle.lambda_ == 1.0 and cfg.shuffle.ste_fraction == 0.25
    cifar = load_config(ROOT / "configs" / "cifar10_shufflenet_v2_x0_5_dynamic.yaml")
    assert (cifar.train.epochs, cifar.data.batch_size, cifar.optim.lr, cifar.optim.weight_decay) == (200, 128, 0.1, 5e-4)
    assert cifar.optim.nesterov and cifar.schedule.name == "cosine" and cifar.train.label_smoothing == 0.0
    imagenet = load_config(ROOT / "configs" / "imagenet_shufflenet_v2_x1_0_static.yaml")
    assert (imagenet.data.batch_size, imagenet.optim.lr, imagenet.optim.weight_decay) == (1024, 0.5, 4e-5)
    assert imagenet.schedule.name == "linear" and imagenet.train.label_smoothing == 0.1
    assert imagenet.optim.exempt_norm_bias
    fashion = load_config(ROOT / "configs" / "fashion-mnist_shufflenet_v1_g8_x0_5_dynamic.yaml")
    assert (fashion.model.name, fashion.model.stem, fashion.data.name) == ("shufflenet_v1_g8_x0_5", "tiny", "fashion-mnist")
    assert (fashion.train.epochs, fashion.data.batch_size, fashion.optim.lr, fashion.schedule.warmup_epochs) == (10, 128, 0.1, 0.5)
    assert fashion.shuffle.explore_fraction == 0.0
    sds = load_config(ROOT / "configs" / "cifar100_shufflenet_v2_x1_0_sds.yaml")
    assert (sds.model.shuffle, sds.model.pointwise) == ("static", "sds")


def test_data_name_choices_come_from_the_data_registry(monkeypatch):
    from dynshuffle.data import registry

    spec = registry.DatasetSpec("my-digits", 10, 32, "cifar", (0.5,) * 3, (0.25,) * 3)
    monkeypatch.setitem(registry._REGISTRY, "my-digits", (spec, registry._REGISTRY["digits"][1]))
    cfg = apply_overrides(Config(), ["data.name=my-digits"])
    assert cfg.data.name == "my-digits"
    assert Config.from_dict({"data": {"name": "my-digits"}}).data.name == "my-digits"
    with pytest.raises(ValueError) as err:
        apply_overrides(Config(), ["data.name=no-such-data"])
    text = str(err.value)
    assert "'data.name'" in text and "'no-such-data'" in text and "my-digits" in text and "cifar10" in text


def test_removed_keys_of_old_run_folders_are_skipped(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("train:\n  epochs: 3\n  debug_dump_weights: false\n")
    assert load_config(old).train.epochs == 3
    with pytest.raises(ValueError, match="unknown config key 'train.debug_dump_weights'"):
        apply_overrides(Config(), ["train.debug_dump_weights=true"])  # not a key any more
