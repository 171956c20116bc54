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


@pytest.mark.subprocess
def test_python_dash_m_is_the_same_command():
    a = subprocess.run([sys.executable, "-m", "dmenet", "--help"], capture_output=True, text=True)
    b = subprocess.run(["dmenet", "--help"], capture_output=True, text=True)
    assert a.returncode == 0 and a.stdout == b.stdout
    c = subprocess.run(
        [sys.executable, "-m", "dmenet", "fit", "--help"], capture_output=True, text=True
    )
    assert c.returncode == 0 and "--model" in c.stdout and "--data" in c.stdout
    assert c.stderr == "", c.stderr  # no warning a user cannot act on (LightningCLI's args ...)


@pytest.mark.parametrize("sub", sorted(LIGHTNING_SUBCOMMANDS))
def test_missing_or_corrupt_ckpt_path_is_one_line(sub, repo_root, tmp_path, capsys):
    config = str(repo_root / "configs" / "quickstart.yaml")
    missing = tmp_path / "missing.ckpt"
    assert main([sub, "--config", config, "--ckpt_path", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"dmenet {sub}: error: --ckpt_path {missing}: no such file"
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 half of a checkpoint")
    assert main([sub, "--config", config, "--ckpt_path", str(corrupt)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--ckpt_path {corrupt}: not a readable PyTorch checkpoint" in err
