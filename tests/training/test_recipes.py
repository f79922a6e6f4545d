"""dynshuffle.training.recipes and configs/generate.py: the generated recipes are current and load."""
from __future__ import annotations

import subprocess
import sys

from dynshuffle.training.config import load_config
from dynshuffle.training.recipes import DATASETS, VARIANTS, recipe


def test_generated_recipes_are_current_and_load(root, env_with_src):
    result = subprocess.run([sys.executable, str(root / "configs" / "generate.py"), "--check"],
                            capture_output=True, text=True, env=env_with_src)
    assert result.returncode == 0, result.stderr
    files = sorted((root / "configs").glob("*.yaml"))
    assert len(files) == 4 * 3 * 4 + 3 * 4 + 4  # 4 datasets x 3 models, Fashion-MNIST x 3 models, digits
    for path in files:
        cfg = load_config(path)
        assert cfg.shuffle.lambda_ == 1.0 and cfg.shuffle.ste_fraction == 0.25
    cifar = load_config(root / "configs" / "cifar10_shufflenet_v2_x0_5_dynamic.yaml")
    assert (cifar.train.epochs, cifar.data.batch_size, cifar.optim.lr, cifar.optim.weight_decay) == (200, 128, 0.1, 5e-4)
    assert cifar.optim.nesterov and cifar.schedule.name == "cosine" and cifar.train.label_smoothing == 0.0
    imagenet = load_config(root / "configs" / "imagenet_shufflenet_v2_x1_0_static.yaml")
    assert (imagenet.data.batch_size, imagenet.optim.lr, imagenet.optim.weight_decay) == (1024, 0.5, 4e-5)
    assert imagenet.schedule.name == "linear" and imagenet.train.label_smoothing == 0.1
    assert imagenet.optim.exempt_norm_bias
    fashion = load_config(root / "configs" / "fashion-mnist_shufflenet_v1_g8_x0_5_dynamic.yaml")
    assert (fashion.model.name, fashion.model.stem, fashion.data.name) == ("shufflenet_v1_g8_x0_5", "tiny", "fashion-mnist")
    assert (fashion.train.epochs, fashion.data.batch_size, fashion.optim.lr, fashion.schedule.warmup_epochs) == (10, 128, 0.1, 0.5)
    assert fashion.shuffle.penalty_free_fraction == 0.0
    assert fashion.optim.grad_clip == 5.0  # what the Fashion-MNIST tables were trained with (method.md §8.2)
    sds = load_config(root / "configs" / "cifar100_shufflenet_v2_x1_0_sds.yaml")
    assert (sds.model.shuffle, sds.model.pointwise) == ("static", "sds")




def test_every_recipe_keeps_the_penalty_from_the_first_step_and_variants_differ_only_in_the_model():
    for dataset in DATASETS:
        base = recipe(dataset).to_dict()
        assert base["shuffle"]["penalty_free_fraction"] == 0.0 and base["shuffle"]["ste_fraction"] == 0.25
        for variant, keys in VARIANTS.items():
            other = recipe(dataset, variant=variant).to_dict()
            assert {k: v for k, v in other["model"].items() if k not in keys} == \
                {k: v for k, v in base["model"].items() if k not in keys}
            assert {s: v for s, v in other.items() if s != "model"} == {s: v for s, v in base.items() if s != "model"}
