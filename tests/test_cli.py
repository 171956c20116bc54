"""The `dmenet` command: top-level help, every subcommand's --help, python -m dmenet."""

import subprocess
import sys

import pytest

from dmenet.cli import LIGHTNING_SUBCOMMANDS, TOOL_SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in [*LIGHTNING_SUBCOMMANDS, *TOOL_SUBCOMMANDS]:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", sorted(TOOL_SUBCOMMANDS))
def test_tool_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert f"dmenet {name}" in capsys.readouterr().out


def test_unknown_command(capsys):
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "blur_estimator" in out and "dmenet_vgg19" in out


@pytest.mark.parametrize("sub", sorted(LIGHTNING_SUBCOMMANDS))
def test_lightning_subcommand_help(sub, capsys):
    with pytest.raises(SystemExit) as info:
        main([sub, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--print_config" in out
    assert "--ckpt_path" in out


def test_python_dash_m_is_the_same_command():
    a = subprocess.run([sys.executable, "-m", "dmenet", "--help"], capture_output=True, text=True)
    b = subprocess.run(["dmenet", "--help"], capture_output=True, text=True)
    assert a.returncode == 0 and a.stdout == b.stdout
    c = subprocess.run(
        [sys.executable, "-m", "dmenet", "fit", "--help"], capture_output=True, text=True
    )
    assert c.returncode == 0 and "--model" in c.stdout and "--data" in c.stdout
