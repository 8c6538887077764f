"""One noun per concept: the CLI's help, the public API and README's concept table use the same words."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from edgesplit import bitstream
from edgesplit.cli import _build_parser

REPO = Path(__file__).resolve().parents[1]

# the canonical nouns, as README's "Concepts" table defines them
CANONICAL = ("teacher", "student", "split", "tail", "symbols", "codec", "tables", "body", "payload", "fingerprint",
             "bundle", "backend", "labels", "classes", "subset")
# words that named one of those concepts in other places; the help of every command and README must not use them so
SYNONYMS = {
    r"--format\b": "--backend (the runtime backend a bundle is exported for and run with)",
    r"--split\b": "--subset (a part of a dataset; a split is a split student)",
    r"\b(held-out|val|validation|training) split\b": "subset (held-out images) — 'split' is split computing",
    r"\blabels per\b": "classes per (the top-k of one image; labels are all of a model's classes)",
    r"\bmodel fingerprint\b": "fingerprint (the bundle's)",
}
BACKEND_COMMANDS = ("eval", "export", "serve", "predict", "benchmark")


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _visible_options(parser: argparse.ArgumentParser) -> set[str]:
    return {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


def test_readme_concepts_table_defines_every_canonical_noun() -> None:
    text = (REPO / "README.md").read_text()
    section = text.split("## Concepts", 1)[1].split("\n## ", 1)[0]
    nouns = [m.group(1).strip() for m in re.finditer(r"^\| ([^|]+?) \|", section, re.M)]
    nouns = [n for n in nouns if n not in ("noun", "---")]
    missing = [n for n in CANONICAL if n not in nouns]
    assert not missing, f"README's Concepts table lacks {missing}"
    assert len(nouns) == len(set(nouns)), f"a noun is defined twice: {nouns}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_cli_help_uses_the_canonical_nouns(command: str) -> None:
    help_text = _commands()[command].format_help()
    flat = " ".join(help_text.split())  # argparse wraps lines; a phrase may straddle two
    used = {pattern: fix for pattern, fix in SYNONYMS.items() if re.search(pattern, flat)}
    assert not used, f"`edgesplit {command} --help` says {sorted(used)}; say instead: {sorted(used.values())}"


def test_readme_prose_uses_the_canonical_nouns() -> None:
    text = (REPO / "README.md").read_text().split("## Changes to contracts", 1)[0]  # that section names old words
    flat = " ".join(text.split())
    used = {pattern: fix for pattern, fix in SYNONYMS.items() if re.search(pattern, flat)}
    assert not used, f"README says {sorted(used)}; say instead: {sorted(used.values())}"


@pytest.mark.parametrize("command", BACKEND_COMMANDS)
def test_every_command_that_runs_a_bundle_names_its_backend_the_same_way(command: str) -> None:
    options = _visible_options(_commands()[command])
    assert "--backend" in options
    assert not options & {"--format", "--formats", "--runtime"}


def test_renamed_flags_still_parse_to_the_new_names(capsys: pytest.CaptureFixture[str]) -> None:
    parser = _build_parser()
    args = parser.parse_args(["eval", "model.safetensors", "--data", "d", "--split", "val"])
    assert args.subset == "val"
    assert "--subset" in capsys.readouterr().err


def test_api_nouns() -> None:
    fields = {f.name for f in dataclasses.fields(bitstream.Frame)}
    assert "body" in fields and "payload" not in fields  # a payload is the whole frame on the wire
    from edgesplit.runtime import Prediction

    fields = {f.name for f in dataclasses.fields(Prediction)}
    assert "classes" in fields and "labels" not in fields  # labels are all of a bundle's classes
    p = Prediction(classes=("a",), probs=(1.0,), logits=__import__("numpy").zeros(2), indices=(0,))
    assert set(p.to_dict()) >= {"classes", "names", "probs"} and "labels" not in p.to_dict()
