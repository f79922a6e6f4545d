"""dynshuffle.training.typed_yaml: the engine on a schema of its own (it knows nothing of training)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from dynshuffle.training import typed_yaml as T


@dataclass
class Net:
    width: int = 4
    rate: float = field(default=0.5, metadata=T.key("lambda", doc="renamed in YAML"))
    act: Optional[str] = field(default=None, metadata=T.key(choices=("relu", "gelu")))
    sizes: Optional[list[int]] = None


@dataclass
class Root:
    net: Net = field(default_factory=Net)


def test_round_trip_types_and_yaml_names():
    root = T.load_mapping(Root(), {"net": {"width": 8, "lambda": 1, "sizes": (2, 3)}})
    assert root.net == Net(width=8, rate=1.0, sizes=[2, 3]) and isinstance(root.net.rate, float)
    assert T.to_dict(root) == {"net": {"width": 8, "lambda": 1.0, "act": None, "sizes": [2, 3]}}
    assert T.to_yaml(root).startswith("net:\n  width: 8\n  lambda: 1.0\n")
    T.load_overrides(root, ["net.act=gelu", "net.sizes=[1]", "net.lambda=2e-3"])
    assert (root.net.act, root.net.sizes, root.net.rate, T.get(root, "net.act")) == ("gelu", [1], 2e-3, "gelu")


@pytest.mark.parametrize("data,match", [
    ({"net": {"width": "8"}}, r"'net.width': expected int, got '8'"),
    ({"net": {"act": "tanh"}}, r"'net.act': 'tanh' is not one of relu, gelu"),
    ({"net": {"widht": 8}}, r"unknown config key 'net.widht'; did you mean 'net.width'"),
    ({"nett": {}}, r"unknown config section 'nett'; did you mean 'net'"),
    ({"net": 3}, r"config section 'net': expected a mapping"),
    ([1], r"a config must be a mapping of sections"),
])
def test_errors_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        T.load_mapping(Root(), data)


def test_read_yaml_names_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("net:\n  width: [unclosed\n")
    with pytest.raises(ValueError, match=r"bad.yaml:\d+:\d+: not valid YAML"):
        T.read_yaml(bad)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        T.read_yaml(tmp_path / "none.yaml")
