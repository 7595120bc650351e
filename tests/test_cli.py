"""The `stroke-ray` command: every subcommand and option is described."""

from __future__ import annotations

import argparse
import shutil

import pytest
from helpers import write_isles22_case

from stroke_ray.cli import COMMANDS, build_parser, main
from stroke_ray.cohort import load_cohort, scan_cohort


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


def test_cohort_prints_what_it_found_and_writes_a_manifest(tmp_path, capsys):
    raw = tmp_path / "isles22"
    write_isles22_case(raw, "strokecase0001")
    write_isles22_case(raw, "strokecase0002", sequences=("dwi", "adc"), label=False, seed=1)
    (raw / "sub-strokecase0001" / "notes.txt").write_text("stray")
    manifest = tmp_path / "out" / "isles22.csv"

    assert main(["cohort", str(raw), "--write-manifest", str(manifest)]) == 0

    assert capsys.readouterr().out.splitlines() == [
        f"layout: bids ({raw})",
        "cases: 2 (1 labelled, 1 unlabelled)",
        "sequences (cases with each): adc 2, dwi 2, flair 1",
        "sequence sets (cases with each): adc dwi: 1; adc dwi flair: 1",
        "cases with a problem: 0",
        "skipped: 1",
        "  sub-strokecase0001/notes.txt: not a NIfTI image",
        f"manifest: {manifest}",
    ]
    assert load_cohort(str(manifest)) == scan_cohort(str(raw)).cases
    assert manifest.read_text().splitlines()[0] == (
        "case_id,flair,dwi,adc,label,subject,session,problem"
    )


def test_cohort_manifest_keeps_case_problems(tmp_path, capsys):
    written = write_isles22_case(tmp_path / "raw", "a")
    shutil.copy(written["adc"], written["adc"].with_name("sub-a_ses-0001_run-2_adc.nii.gz"))
    assert main(["cohort", str(tmp_path / "raw"), "--write-manifest", str(tmp_path / "m.csv")]) == 0
    out = capsys.readouterr().out
    assert "cases with a problem: 1\n  case sub-a_ses-0001: 2 adc files (" in out
    assert load_cohort(str(tmp_path / "m.csv")) == scan_cohort(str(tmp_path / "raw")).cases


def test_cohort_of_a_missing_path_fails_cleanly(tmp_path, capsys):
    assert main(["cohort", str(tmp_path / "nothing")]) == 2
