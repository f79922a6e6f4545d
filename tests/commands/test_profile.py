"""`dynshuffle profile MODEL` (dynshuffle.commands.profile)."""
import json
import subprocess
import sys

from dynshuffle.models.blocks import POINTWISE_KINDS, SHUFFLE_KINDS, STEMS
from dynshuffle.profiling.counting import profile
from dynshuffle.profiling.formatting import format_bytes, format_count


def test_profile_command(cli, capsys, tmp_path):
    out = tmp_path / "rows.json"
    assert cli(["profile", "shufflenet_v2_x0_5", "--stem", "cifar", "--shuffle", "dynamic", "--batch", "2",
                "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "shufflenet_v2_x0_5" in text and "dynamic" in text and "MACs" in text and "3x32x32" in text
    (row,) = json.loads(out.read_text())
    expected = profile("shufflenet_v2_x0_5", 32, batch=2, num_classes=10, stem="cifar", shuffle="dynamic")
    assert (row["shuffle"], row["params"], row["MACs"], row["train FLOPs"], row["act@2"]) == (
        "dynamic", format_count(expected.params), format_count(expected.macs), format_count(expected.flops),
        format_bytes(expected.peak_activation_bytes))
    assert "+params" not in row  # one variant: no overhead columns
    assert cli(["profile", "shufflenet_v1_g8_x0_25", "--stem", "cifar", "--compare", "--batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "+params" in text and [line.split()[1] for line in text.splitlines()[2:]] == \
        ["static", "learned", "dynamic", "static"]  # V1 has no dynamic + sds


def test_the_options_take_the_models_lists(cli, capsys):
    """The command spells its choices out (so that --help does not import torch): they are the library's."""
    from dynshuffle.commands import profile as command

    parser = __import__("argparse").ArgumentParser()
    command.configure(parser)
    choices = {a.dest: tuple(a.choices) for a in parser._actions if a.choices}
    assert set(choices["shuffle"]) == set(SHUFFLE_KINDS) and set(choices["pointwise"]) == set(POINTWISE_KINDS)
    assert set(choices["stem"]) == set(STEMS) and set(command._NUM_CLASSES) == set(STEMS)


def test_profile_and_models_commands_import_without_torch(env_with_src):
    # `dynshuffle --help` and `dynshuffle models` must stay fast: importing the command modules may not
    # load torch or numpy (they import the heavy stacks inside `run`).
    code = ("import sys, dynshuffle.commands.profile, dynshuffle.commands.models; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env_with_src)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
