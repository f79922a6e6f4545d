"""`dynshuffle models [PATTERN]` (dynshuffle.commands.models)."""
from dynshuffle.models.registry import list_models


def test_models_command(cli, capsys):
    assert cli(["models", "shufflenet_v2_*"]) == 0
    assert capsys.readouterr().out.split() == ["shufflenet_v2_x0_5", "shufflenet_v2_x0_625", "shufflenet_v2_x1_0",
                                               "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    assert cli(["models"]) == 0
    assert capsys.readouterr().out.split() == list_models() and len(list_models()) == 24
    assert cli(["models", "nothing*"]) == 1
    assert "no registered model matches 'nothing*'" in capsys.readouterr().err
