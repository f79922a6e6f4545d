"""The documentation (README.md, docs/*.md): its commands run as written: every `dynshuffle ...` line of a ```bash block
parses, and the fast ones (help, models, profile, a smoke-test digits train, eval, export, show) run in a
temporary folder; the Python examples that start processes carry a main guard and run as scripts, as does the
README's layer example. The figures the docs quote from `compare` equal the results files they name. Also the
CLI's small promises: --version, one-line errors, file modes."""
from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from dynshuffle import cli

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The fast commands, exactly as the docs write them, in the order they depend on each other.
FAST = [
    "dynshuffle --version",
    "dynshuffle models",
    "dynshuffle profile shufflenet_v2_x1_0 --shuffle dynamic",
    "dynshuffle train --config configs/digits_shufflenet_v2_x0_5_dynamic.yaml --out runs/digits-dynamic "
    "--overwrite --set train.epochs=1 --set train.steps_per_epoch=10 --threads 1",
    "dynshuffle eval --checkpoint runs/digits-dynamic/best.safetensors --threads 1",
    "dynshuffle export --checkpoint runs/digits-dynamic --onnx model.onnx --force",
    "dynshuffle show --checkpoint runs/digits-dynamic --out pictures/ --force --samples 64 --inputs 1 "
    "--layers stage2.*",
]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file name, argv) of every line of a ```bash block that runs `dynshuffle` (continuations joined,
    comments dropped); lines with [optional] usage brackets are synopses, not commands."""
    found = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    argv = shlex.split(part, comments=True)
                    if argv and argv[0] == "dynshuffle" and not any(a.startswith("[") for a in argv):
                        found.append((path.name, argv))
    return found


def test_the_docs_hold_the_fast_commands():
    commands = {" ".join(argv) for _, argv in documented_commands()}
    for command in FAST:
        assert command in commands, command
    # deploy.md's show example names the folder that training.md's digits command writes
    training = (ROOT / "docs" / "training.md").read_text()
    assert "--out runs/digits-dynamic" in training
    assert "dynshuffle show --checkpoint runs/digits-dynamic" in (ROOT / "docs" / "deploy.md").read_text()


@pytest.mark.parametrize("where,argv", documented_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v[:3]))
def test_every_documented_command_parses(where, argv):
    parser = cli.build_parser()
    try:
        parser.parse_args(argv[1:])
    except SystemExit as err:  # --help / --version exit 0; an unknown option exits 2
        assert err.code == 0, f"{where}: {' '.join(argv)}"


def test_every_command_has_help(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as err:
            cli.main([name, "--help"])
        assert err.value.code == 0
        assert "usage: dynshuffle " + name in capsys.readouterr().out


def test_the_fast_commands_run_as_written(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # --threads 1 must not outlive the command
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    for command in FAST:
        argv = shlex.split(command)[1:]
        if argv == ["--version"]:
            with pytest.raises(SystemExit) as err:
                cli.main(argv)
            assert err.value.code == 0 and re.match(r"dynshuffle \d", capsys.readouterr().out)
            continue
        assert cli.main(argv) == 0, command
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "pictures" / "training.png").is_file()
    assert (tmp_path / "runs" / "digits-dynamic" / "log.csv").is_file()


# ---------------------------------------------------------------------------------- small CLI promises


def test_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    assert cli.main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "<unicode string>" not in err
    for argv in (["eval", "--checkpoint", str(tmp_path / "nothing")],
                 ["train", "--config", str(tmp_path / "nope.yaml")],
                 ["train", "--out", str(tmp_path / "norun"), "--resume"]):
        assert cli.main(argv) == 2
        assert "not found: " + str(tmp_path) in capsys.readouterr().err


def test_download_flag_and_existing_run_message(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", str(ROOT / "configs" / "digits_shufflenet_v2_x0_5_static.yaml"), "--out", str(out),
            "--download", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=1",
            "--set", "train.eval_steps=1", "--set", "log.tensorboard=false"]
    assert cli.main(argv) == 0
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["download"] is True
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "last.safetensors").stat().st_mode) == 0o666 & ~umask  # not 0600
    capsys.readouterr()
    assert cli.main(argv) == 2
    assert "already holds a run" in (err := capsys.readouterr().err) and "--overwrite" in err


def test_errors_name_python_arguments_in_python_and_flags_on_the_command_line(tmp_path):
    from dynshuffle.data.errors import DataError
    from dynshuffle.data.registry import build_datasets
    from dynshuffle.utils import command_line_names

    with pytest.raises(DataError) as err:
        build_datasets("cifar10", root=tmp_path)
    assert "download=True" in str(err.value) and "--download" not in str(err.value)
    with command_line_names(), pytest.raises(DataError) as err:  # as `dynshuffle train` runs it
        build_datasets("cifar10", root=tmp_path)
    assert "--download" in str(err.value) and "download=True" not in str(err.value)


def test_bench_kron_variants_help_exits_without_benchmarking():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kron_variants.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "ratio" not in proc.stdout


# ---------------------------------------------------------------------------------- Python examples


def python_blocks() -> list[tuple[str, str]]:
    """(file name, code) of every ```python block of the docs."""
    return [(path.name, code) for path in DOCS for code in re.findall(r"```python\n(.*?)```", path.read_text(), re.S)]


def _starts_processes(code: str) -> bool:
    return "compare(" in code


def scripts() -> list[tuple[str, str]]:
    """The examples the docs test runs as scripts: those that start processes, and the README's layer example."""
    return [(name, code) for name, code in python_blocks()
            if _starts_processes(code) or (name == "README.md" and "fuse_for_inference(block)" in code)]


def test_examples_that_start_processes_have_a_main_guard():
    starting = [(name, code) for name, code in python_blocks() if _starts_processes(code)]
    assert starting  # training.md's compare example
    for name, code in starting:
        assert 'if __name__ == "__main__":' in code, f"{name}: spawned workers re-import the script"


@pytest.mark.parametrize("name,code", scripts(), ids=lambda v: v if v.endswith(".md") else None)
def test_examples_run_as_scripts(name, code, tmp_path):
    import dynshuffle

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(Path(dynshuffle.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------------------------- quoted results

RESULTS_FILE = re.compile(r"`(docs/results/[^`]+/compare\.md)`")
FIGURE = re.compile(r"(\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str) -> list[tuple[str, list[list[str]]]]:
    """(the paragraph before the table, its rows of cells without the |---| line) of every markdown table."""
    found, lines = [], text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|") and i + 1 < len(lines) and re.match(r"\s*\|[-:| ]+\|\s*$", lines[i + 1]):
            j = i
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            k = i - 1
            while k >= 0 and not lines[k].strip():
                k -= 1
            start = k
            while start > 0 and lines[start - 1].strip():
                start -= 1
            before = " ".join(lines[start:k + 1]) if k >= 0 else ""
            found.append((before, [_cells(lines[i])] + [_cells(x) for x in lines[i + 2:j]]))
            i = j
        else:
            i += 1
    return found


def quoted_tables() -> list[tuple[str, str, list[list[str]]]]:
    """(doc, results file, rows) of every table whose introducing paragraph ends with a colon and names a
    `docs/results/.../compare.md` file: a table quoted from that file."""
    out = []
    for path in DOCS:
        for before, rows in _tables(path.read_text()):
            named = RESULTS_FILE.findall(before)
            if named and before.rstrip().endswith(":"):
                out.append((path.name, named[-1], rows))
    return out


def test_quoted_tables_equal_the_results_files_they_name():
    quotes = quoted_tables()
    assert {doc for doc, _, _ in quotes} >= {"training.md", "method.md"}
    for doc, results, rows in quotes:
        (table,) = [t for _, t in _tables((ROOT / results).read_text())]
        header = table[0]
        assert set(rows[0]) <= set(header), f"{doc}: columns not in {results}"
        by_variant = {r[0]: dict(zip(header, r)) for r in table[1:]}
        assert [r[0] for r in rows[1:]] == [r[0] for r in table[1:]], f"{doc}: rows of {results}"
        for row in rows[1:]:
            assert dict(zip(rows[0], row)) == {c: by_variant[row[0]][c] for c in rows[0]}, f"{doc} quotes {results}"


def test_figures_in_sentences_come_from_the_results_files_they_name():
    """A paragraph (or list item) that names a results file quotes its 'mean ± std' figures, rounded or not."""
    checked = 0
    for path in DOCS:
        for paragraph in re.split(r"\n\s*\n|\n(?=\s*[-*] )", path.read_text()):
            if paragraph.lstrip().startswith("|"):
                continue
            named = sorted(set(RESULTS_FILE.findall(paragraph)))
            if not named:
                continue
            available = [f for results in named for f in FIGURE.findall((ROOT / results).read_text())]
            for mean, std in FIGURE.findall(paragraph):
                decimals = len(mean.partition(".")[2])
                assert any(f"{float(m):.{decimals}f}" == mean and f"{float(s):.{decimals}f}" == std
                           for m, s in available), f"{path.name}: {mean} ± {std} is not in {', '.join(named)}"
                checked += 1
    assert checked >= 4  # the README's digits sentences
