"""Runs that meet faults: `--resume auto`, a full disk while a checkpoint is written, and corrupt images in a
folder dataset (dynshuffle.training.faults injects the faults of test_distributed.py: a killed and a hung rank
under torchrun)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dynshuffle import checkpoints as ckpt
from dynshuffle import utils
from dynshuffle.cli import main as cli_main
from dynshuffle.data.errors import DataError
from dynshuffle.data.folders import MAX_CORRUPT_RUN
from dynshuffle.training.loop import train
from dynshuffle.utils import read_csv


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------- --resume auto


def test_resume_auto_starts_afresh_then_continues(tmp_path, capsys, static_config, write_yaml):
    config = write_yaml(tmp_path / "cfg.yaml", static_config())
    run = tmp_path / "run"
    command = ["train", "--config", str(config), "--out", str(run), "--resume", "auto"]
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    assert f"resume: no training state in {run} yet (--resume auto); starting a new run" in out
    assert "from epoch" not in out

    assert cli_main([*command, "--set", "train.epochs=2"]) == 0  # the same command line after a restart
    out = capsys.readouterr().out
    assert f"resume: {run} from epoch 1/2" in out and "no training state" not in out
    assert [r["epoch"] for r in read_csv(run / "log.csv")[1]] == ["1", "2"]

    # plain --resume keeps its meaning: a folder without a state is an error, not a fresh start
    assert cli_main(["train", "--config", str(config), "--out", str(tmp_path / "new"), "--resume"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--config", str(config), "--resume", "yes"])
    assert "argument --resume: invalid choice: 'yes' (choose from 'auto')" in capsys.readouterr().err


def test_train_resume_auto_in_the_config_and_its_checks(tmp_path, static_config):
    cfg = static_config(**{"train.resume": "auto"})
    run = tmp_path / "run"
    train(cfg, run)
    cfg.train.epochs = 2
    assert [r["epoch"] for r in train(cfg, run)["history"]] == [1, 2]  # the recipe resumes by itself
    assert [r["epoch"] for r in train(cfg, run, overwrite=True)["history"]] == [1, 2]  # --overwrite wins
    with pytest.raises(ValueError, match='resume="auto" and overwrite=True contradict'):
        train(cfg, run, resume="auto", overwrite=True)
    with pytest.raises(ValueError, match="resume: expected True, False or 'auto', got 'yes'"):
        train(cfg, run, resume="yes")

    (run / "last.state.pt").write_bytes(b"garbage")  # a damaged state stops auto; it never starts over silently
    with pytest.raises(ckpt.CheckpointError, match="last.state.pt"):
        train(cfg, run)


# ------------------------------------------------------------------------------------------ a full disk


class FullDisk:
    """A file that takes `room` bytes and then fails the way write(2) does on a full disk."""

    def __init__(self, fh, room: int):
        self.fh, self.room = fh, room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.fh.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)


def fill_disk_when_writing(monkeypatch, name: str, room: int = 4096) -> None:
    """The next atomic writes of files called `name` fail half-way (after `room` bytes) with ENOSPC."""
    real_temp, real_fdopen = utils._temp_beside, os.fdopen
    doomed = set()

    def temp_beside(path):
        fd, tmp = real_temp(path)
        if path.name == name:
            doomed.add(fd)
        return fd, tmp

    def fdopen(fd, *args, **kwargs):
        fh = real_fdopen(fd, *args, **kwargs)
        return FullDisk(fh, room) if fd in doomed else fh

    monkeypatch.setattr(utils, "_temp_beside", temp_beside)
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("name", ["last.safetensors", "last.state.pt"])
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, capsys, name, static_config, write_yaml):
    cfg = static_config()
    config = write_yaml(tmp_path / "cfg.yaml", cfg)
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(config), "--out", str(run)]) == 0
    before = {f: (run / f).read_bytes() for f in ("last.safetensors", "last.state.pt", "log.csv")}
    capsys.readouterr()

    fill_disk_when_writing(monkeypatch, name)
    assert cli_main(["train", "--out", str(run), "--resume", "--set", "train.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert f"[Errno {errno.ENOSPC}] No space left on device: '{run / name}'" in err and err.count("\n") == 1
    monkeypatch.undo()

    assert {f: (run / f).read_bytes() for f in before} == before  # the pair of epoch 1, byte for byte
    _, _, state = ckpt.load_checkpoint(run)
    assert state["epoch"] == 1
    assert temp_files(run) == []
    assert cli_main(["train", "--out", str(run), "--resume", "--set", "train.epochs=2"]) == 0  # and it resumes


# ---------------------------------------------------------------------------------------- corrupt images


def _corrupt(path: Path, how: str) -> Path:
    if how == "garbage":
        path.write_bytes(b"\xff\xd8\xff not really a jpeg")
    else:  # truncated: the header decodes, the pixels do not
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(folder / f"img{i}.JPEG")
        pixels = np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(paths[-1], "JPEG")
    return paths


def test_skip_corrupt_replaces_with_the_next_image_and_counts_across_workers(tmp_path, capfd):
    from dynshuffle.data.folders import ImageFileDataset
    from dynshuffle.data.transforms import eval_transform

    paths = _images(tmp_path / "images", 6)
    _corrupt(paths[1], "garbage")
    _corrupt(paths[4], "truncated")
    dataset = ImageFileDataset([(p, i) for i, p in enumerate(paths)], ["c"], eval_transform(32, 32))
    with pytest.raises(DataError, match=f"{paths[1]}: cannot decode"):
        dataset[1]

    dataset.skip_corrupt_images(workers=2)
    loader = DataLoader(dataset, batch_size=3, num_workers=2)  # one batch, and one corrupt file, per worker
    labels = torch.cat([labels for _, labels in loader]).tolist()
    assert labels == [0, 2, 2, 3, 5, 5]  # each corrupt item became the next readable one
    assert dataset[1][1] == dataset[1][1] == 2  # and in this process (slot 0)
    assert dataset.corrupt_counts.tolist() == [2, 1, 1] and dataset.corrupt_skipped == 4
    err = capfd.readouterr().err  # each process names each file once
    assert err.count(f"data.skip_corrupt: {paths[1]}: cannot decode") == 2
    assert err.count(f"data.skip_corrupt: {paths[4]}: cannot decode") == 1

    _corrupt(paths[0], "garbage")
    many = ImageFileDataset([(paths[0], 0)] * MAX_CORRUPT_RUN, ["c"], eval_transform(32, 32))
    many.skip_corrupt_images(workers=0)
    with pytest.raises(DataError, match=f"the next {MAX_CORRUPT_RUN - 1} images do not decode"):
        many[0]


def _tiny_with_corrupt_files(root: Path, dataset_tree) -> tuple[Path, list[Path]]:
    """The 2-class Tiny ImageNet tree (8 training, 2 validation images) with two training images and one extra
    validation image that do not decode."""
    root = dataset_tree("tiny-imagenet", root)
    images = root / "tiny-imagenet-200" / "train"
    bad = [_corrupt(images / "n01" / "images" / "n01_1.JPEG", "garbage"),
           _corrupt(images / "n02" / "images" / "n02_3.JPEG", "truncated")]
    val = root / "tiny-imagenet-200" / "val"
    (val / "images" / "val_bad.JPEG").write_bytes(b"not an image")
    with open(val / "val_annotations.txt", "a") as fh:
        fh.write("val_bad.JPEG\tn01\t0\t0\t63\t63\n")
    return root, bad


def test_a_corrupt_image_stops_the_run_naming_the_file(tmp_path, static_config, dataset_tree):
    root, bad = _tiny_with_corrupt_files(tmp_path / "data", dataset_tree)
    cfg = static_config(**{"data.name": "tiny-imagenet", "data.batch_size": 4, "data.eval_batch_size": 8,
                           "train.steps_per_epoch": 2})
    with pytest.raises(DataError) as err:
        train(cfg, tmp_path / "run", data_root=str(root))
    text = str(err.value)
    assert any(text.startswith(f"{path}: cannot decode the image (") for path in bad) and "\n" not in text, text


def test_a_data_error_from_a_dataloader_worker_stays_one_line():
    """What a DataLoader does with a worker's exception: torch's ExceptionWrapper re-creates it in the main
    process from the worker's whole formatted traceback. (Called here directly: a real worker that raised
    takes DataLoader 5 s to shut down.)"""
    from torch._utils import ExceptionWrapper

    try:
        try:
            raise OSError("image file is truncated")
        except OSError as cause:
            raise DataError("/data/a.JPEG: cannot decode the image (OSError: image file is truncated)") from cause
    except DataError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 3")
    with pytest.raises(DataError) as err:
        wrapper.reraise()
    assert str(err.value) == ("/data/a.JPEG: cannot decode the image (OSError: image file is truncated) "
                              "(in DataLoader worker process 3)")


def test_skip_corrupt_logs_the_count_per_epoch(tmp_path, capfd, static_config, dataset_tree):
    root, bad = _tiny_with_corrupt_files(tmp_path / "data", dataset_tree)
    cfg = static_config(**{"data.name": "tiny-imagenet", "data.batch_size": 4, "data.eval_batch_size": 8,
                           "train.epochs": 2, "train.steps_per_epoch": 2, "data.workers": 2,
                           "data.skip_corrupt": True, "log.print_epochs": True})
    result = train(cfg, tmp_path / "run", data_root=str(root))
    # Both batches of 4 draw all 8 training images every epoch (from two worker processes): 2 corrupt.
    assert [r["skipped_corrupt"] for r in result["history"]] == [2, 2]
    assert [r["skipped_corrupt"] for r in read_csv(tmp_path / "run" / "log.csv")[1]] == ["2", "2"]
    out, err = capfd.readouterr()
    assert out.count("skipped 2 corrupt image(s)") == 2
    for path in [*bad, root / "tiny-imagenet-200" / "val" / "images" / "val_bad.JPEG"]:
        assert f"data.skip_corrupt: {path}: cannot decode" in err  # the warnings name every file

    off = train(static_config(**{"train.epochs": 1}), tmp_path / "digits")
    assert off["history"][0]["skipped_corrupt"] is None  # skip_corrupt off: an empty column
