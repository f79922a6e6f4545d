"""Training, evaluation and comparison of dynshuffle models.

    from dynshuffle.training.config import load_config
    from dynshuffle.training.loop import train
    from dynshuffle.training.compare import compare
    cfg = load_config("configs/digits_shufflenet_v2_x0_5_dynamic.yaml", ["train.epochs=4"])
    result = train(cfg, "runs/digits-dynamic")
    rows = compare(seeds=1, epochs=2)

- `typed_yaml`: the engine (nested dataclasses <-> YAML, type and choice checks, `section.key=value`);
- `config`: the schema of a recipe (its sections and keys, their checks, the renamed keys of old files);
- `recipes`: one recipe per dataset and the shuffle variants; `loop`: `train`; `evaluate`; `compare`;
- `optim`, `distributed`, `logging`, `faults`: the pieces of the loop.

See docs/training.md for the recipe keys, the run folder and multi-GPU use.
"""
