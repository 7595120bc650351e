"""The `stroke-ray` command: every subcommand and option is described."""

from __future__ import annotations

import argparse

import pytest

from stroke_ray.cli import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_is_wired_and_documented():
    subparsers = _subparsers(build_parser())
    assert set(subparsers) == set(COMMANDS)
    for name, parser in subparsers.items():
        assert parser.description, name
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_exits_cleanly(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: stroke-ray" in capsys.readouterr().out


def test_bad_storage_options_are_rejected(capsys):
    with pytest.raises(SystemExit):
        main(
            ["segment", "--cohort", "c", "--model", "m", "--out", "o", "--storage-options", "{nope"]
        )
    assert "not valid JSON" in capsys.readouterr().err


def test_demo_writes_a_cohort(tmp_path, capsys):
    assert main(["demo", str(tmp_path / "c"), "--cases", "2", "--shape", "32", "32", "24"]) == 0
    assert (tmp_path / "c" / "manifest.csv").exists()
    assert "manifest.csv" in capsys.readouterr().out
