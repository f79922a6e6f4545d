"""`dynshuffle show`: PNG pictures of the permutations a checkpoint's dynamic shuffles generate."""
from __future__ import annotations

import argparse
import os


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a run folder (its last checkpoint; log.csv adds the training picture), "
                             "a .safetensors or a .state.pt file")
    parser.add_argument("--data", metavar="NAME_OR_PATH",
                        help="dataset root folder, or a dataset name (default: the checkpoint's own data)")
    parser.add_argument("--dataset", metavar="NAME",
                        help="dataset name, e.g. digits (default: the one the checkpoint was trained on)")
    parser.add_argument("--split", default="val", choices=("val", "train"))
    parser.add_argument("--samples", type=int, default=256, metavar="N",
                        help="images the statistics are computed on (a fixed random subset; default 256)")
    parser.add_argument("--inputs", type=int, default=3, metavar="K",
                        help="inputs whose matrices are drawn in matrices_<layer>.png (default 3)")
    parser.add_argument("--layers", metavar="PATTERN", action="append",
                        help="only these shuffle layers (fnmatch pattern, e.g. 'stage4.*'; repeatable; default all)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files and stats.json")
    parser.add_argument("--force", action="store_true", help="overwrite existing pictures in --out")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset (default 0)")


def _dataset_and_root(args, meta: dict) -> tuple[str, str | None]:
    """--dataset names the data; --data is its root, or (when it is no existing path) a dataset name."""
    from dynshuffle.data.registry import list_datasets

    data_cfg = (meta.get("config") or {}).get("data", {}) or {}
    name, root = args.dataset, args.data
    if root is not None and not os.path.exists(root):
        known = {d.replace("_", "-") for d in list_datasets()}
        if root.strip().lower().replace("_", "-") in known:
            if name is not None and name != root:
                raise ValueError(f"--data {root!r} names a dataset, and so does --dataset {name!r}")
            name, root = root, None
        else:
            raise FileNotFoundError(f"--data {root}: no such folder, and not a dataset name "
                                    f"({', '.join(list_datasets())})")
    if name is None:
        name = data_cfg.get("name")
        if root is None:
            root = data_cfg.get("root")
    if not name:
        raise ValueError("the checkpoint does not name its dataset; pass --dataset (e.g. --dataset digits)")
    return name, root


def run_label(model_config: dict, train_config: dict, folder) -> str:
    """The run as training.png's title names it: its variant (as `compare` names them), model, seed and folder,
    e.g. "dynamic, shufflenet_v2_x0_5, seed 0: runs/cmp/dynamic/seed0"."""
    from dynshuffle.training.recipes import VARIANTS

    variant = next((name for name, keys in VARIANTS.items()
                    if all(model_config.get(k) == v for k, v in keys.items())), None)
    seed = (train_config.get("train") or {}).get("seed")
    parts = [variant or f"shuffle {model_config.get('shuffle')}", model_config.get("name"),
             f"seed {seed}" if seed is not None else None]
    return ", ".join(str(p) for p in parts if p) + f": {folder}"


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a folder")
    if args.samples < 2:
        raise ValueError(f"--samples must be at least 2 (agreement is measured between pairs), got {args.samples}")
    if args.inputs < 1:
        raise ValueError(f"--inputs must be at least 1, got {args.inputs}")

    import torch

    from dynshuffle.checkpoints import build_model_from_checkpoint
    from dynshuffle.data.registry import build_datasets, get_dataset_spec
    from dynshuffle.data.transforms import BatchTransform
    from dynshuffle.inspection.plots import render_report
    from dynshuffle.inspection.stats import require_layers
    from dynshuffle.training.distributed import resolve_device

    device = resolve_device(args.device)
    model, meta = build_model_from_checkpoint(args.checkpoint, device)
    try:
        require_layers(model)
    except ValueError as err:
        raise ValueError(f"{args.checkpoint}: {err}") from None
    name, root = _dataset_and_root(args, meta)
    spec = get_dataset_spec(name)
    train_set, val_set = build_datasets(name, root=root)
    dataset = val_set if args.split == "val" else train_set
    count = min(args.samples, len(dataset))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[:count]
    items = [dataset[int(i)] for i in order]
    images = BatchTransform(spec, train=False)(torch.stack([img for img, _ in items])).to(device)
    labels = torch.tensor([int(label) for _, label in items])

    ckpt = Path(args.checkpoint)
    log_csv = (ckpt if ckpt.is_dir() else ckpt.parent) / "log.csv"
    label = run_label(getattr(model, "config", None) or {}, meta.get("config") or {}, log_csv.parent)
    written = render_report(model, images, labels, out, log_csv=log_csv if log_csv.is_file() else None,
                            n_inputs=min(args.inputs, count), force=args.force,
                            class_names=getattr(dataset, "classes", None), layers=args.layers, run=label)
    print(f"{len(written)} files in {out} ({count} {spec.name} {args.split} images):")
    for path in written:
        print(f"  {path.name}")
    if not log_csv.is_file():
        print(f"(no training picture: {log_csv} not found)")
    return 0
