"""`dynshuffle datasets` (dynshuffle.commands.datasets): every registered dataset with its classes, image size and
where its data is found."""
from dynshuffle.data import fashion_mnist
from dynshuffle.data.registry import dataset_info, dataset_table, list_datasets


def test_datasets_command_lists_every_dataset_and_where_it_is(cli, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path / "absent")  # as on a machine without the package
    assert cli(["datasets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["dataset", "classes", "image", "size", "data"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == list_datasets()
    for name, line in rows.items():
        info = dataset_info(name)
        size = f"{info['image_size']}x{info['image_size']}"
        assert line.split()[1:3] == [str(info["classes"]), size]
    assert "bundled with scikit-learn" in rows["digits"]
    assert rows["cifar10"].endswith("needs --data PATH (--download fetches it)")
    assert rows["imagenet"].endswith("needs --data PATH")
    assert rows["fashion-mnist"].endswith("needs --data PATH (--download fetches it)")


def test_a_debian_dataset_is_found_in_its_folder(monkeypatch, tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    monkeypatch.setattr(fashion_mnist, "DEBIAN_ROOT", tmp_path)
    row = next(r for r in dataset_table() if r["name"] == "fashion-mnist")
    assert row["found"].startswith(str(tmp_path)) and row["downloadable"]
    assert (row["classes"], row["image_size"]) == (10, 28)
    assert dataset_info("Fashion_MNIST") == row
