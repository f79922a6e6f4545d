"""dynshuffle.training.config: the schema of a recipe (keys, types, choices, checks), YAML loading, `--set`
overrides, and the files of earlier versions (renamed and removed keys)."""
from __future__ import annotations

import pytest
import yaml

from dynshuffle.training.config import RENAMED_KEYS, Config, apply_overrides, load_config, save_config, upgrade


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
    ({"shuffle": {"ste_fraction": 1.5}}, r"'shuffle.ste_fraction': must be in \[0, 1\], got 1.5"),
    ({"shuffle": {"penalty_free_fraction": 0.9}}, r"'shuffle.penalty_free_fraction': plus ste_fraction must be <= 1"),
    ({"shuffle": {"lambda": -1}}, r"'shuffle.lambda': must be >= 0, got -1.0"),
    ({"optim": {"generator_weight_decay": -1e-4}}, r"'optim.generator_weight_decay': must be >= 0 or null"),
    ({"shuffle": {"train_mode": "frozen"}}, r"'shuffle.train_mode': 'frozen' is not one of soft, ste"),
    ({"model": {"stats": "max"}}, r"'model.stats': 'max' is not one of mean, mean_std"),
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


def test_data_name_choices_come_from_the_data_registry(monkeypatch):
    import dataclasses

    from dynshuffle.data import registry
    from dynshuffle.data.spec import DatasetSpec

    spec = DatasetSpec("my-digits", 10, 32, "cifar", (0.5,) * 3, (0.25,) * 3)
    monkeypatch.setitem(registry._REGISTRY, "my-digits", dataclasses.replace(registry._REGISTRY["digits"], spec=spec))
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


def test_model_keys_pass_through_to_the_layers():
    from dynshuffle.training.loop import layer_options

    cfg = apply_overrides(Config(), ["model.diversity=0.5", "model.initial_confidence=0.3", "model.stats=mean_std"])
    assert layer_options(cfg) == {"initial_confidence": 0.3, "stats": "mean_std", "diversity": 0.5}
    assert layer_options(Config()) == {}  # null keys: the layers' (and the models') defaults


# ---- files written before a key was renamed ---------------------------------------------------------------

def _written_before_the_renames(cfg: Config) -> dict:
    """`cfg` as a dict with the key names of an earlier version."""
    old = cfg.to_dict()
    for old_key, new_key in RENAMED_KEYS.items():
        (section, old_name), (_, new_name) = old_key.split("."), new_key.split(".")
        old[section] = {(old_name if k == new_name else k): v for k, v in old[section].items()}
    return old


def test_old_key_names_load_to_the_same_config(tmp_path):
    assert RENAMED_KEYS == {"model.confidence": "model.initial_confidence",
                            "shuffle.explore_fraction": "shuffle.penalty_free_fraction"}
    cfg = apply_overrides(Config(), ["model.initial_confidence=0.3", "shuffle.penalty_free_fraction=0.25"])
    old = _written_before_the_renames(cfg)
    assert old["model"]["confidence"] == 0.3 and "initial_confidence" not in old["model"]
    assert old["shuffle"]["explore_fraction"] == 0.25
    assert Config.from_dict(old) == cfg  # compare's result.json, a checkpoint's config
    path = tmp_path / "config.yaml"  # a run folder's config.yaml
    path.write_text(yaml.safe_dump(old, sort_keys=False))
    assert load_config(path) == cfg
    assert upgrade(old) == cfg.to_dict() and old["model"]["confidence"] == 0.3  # a copy: the input is kept
    with pytest.raises(ValueError, match="unknown config key 'model.confidence'"):
        apply_overrides(Config(), ["model.confidence=0.3"])  # --set takes the current names only


def test_compare_recognises_a_recipe_saved_with_the_old_key_names():
    from dynshuffle.training.compare import _recipe_key, base_config

    current = base_config("digits")
    old = _written_before_the_renames(current)
    assert _recipe_key(old) == _recipe_key(current.to_dict())
    old["shuffle"]["explore_fraction"] = 0.5  # a different recipe is still told apart
    assert _recipe_key(old) != _recipe_key(current.to_dict())


def test_resume_reads_the_checkpoint_config_under_the_new_names():
    from dynshuffle.training.loop import resume_changes

    cfg = apply_overrides(Config(), ["model.initial_confidence=0.3"])
    assert resume_changes(_written_before_the_renames(cfg), cfg) == ([], [])
    changed, refused = resume_changes(_written_before_the_renames(cfg), apply_overrides(
        Config(), ["model.initial_confidence=0.5"]))
    assert changed == refused == ["model.initial_confidence: 0.3 -> 0.5"]
