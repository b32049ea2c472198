"""Every command's ``--help``: answered without the model, training or Flower libraries, every option explained."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENTRY_POINTS = {
    "fedpers": "simulations.cli",
    "fedpers-client": "clients.cli",
    "fedpers-server": "server.cli",
}
HEAVY = ("torch", "transformers", "peft", "opacus", "flwr", "ray", "matplotlib")

# Run in a fresh interpreter: every (sub)command's --help through the entry point's main(), then the
# top-level packages that were imported.
PROBE = r"""
import argparse, contextlib, importlib, io, json, sys

module = importlib.import_module(sys.argv[1])

def commands(parser, path=()):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))

helps = {}
for path in commands(module.build_parser()):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            module.main([*path, "--help"])
        except SystemExit as exit:
            assert exit.code == 0, (path, exit.code)
    helps[" ".join(path)] = out.getvalue()
print(json.dumps({"helps": helps, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def _options(module: str) -> Iterator[tuple[str, argparse.Action, str]]:
    """``(command, action, help as shown)`` of every option and argument of every command."""
    for path, parser in _commands(importlib.import_module(module).build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            shown = formatter._expand_help(action) if action.help else ""
            yield " ".join(path), action, shown


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_help_of_every_command_imports_no_model_training_or_flower_library(command):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ENTRY_POINTS[command]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout.splitlines()[-1])
    assert len(probe["helps"]) > 1  # the entry point and its subcommands
    for path, text in probe["helps"].items():
        assert text.startswith(f"usage: {command} {path}".rstrip()), (path, text[:80])
    assert not [name for name in HEAVY if name in probe["modules"]]


@pytest.mark.parametrize("module", ENTRY_POINTS.values())
def test_every_option_has_help_and_at_most_one_default(module):
    for command, action, shown in _options(module):
        where = (module, command, action.option_strings or action.dest)
        assert shown.strip(), where
        assert shown.count("default:") <= 1, (where, shown)
        assert "(default: )" not in shown and "(default: None)" not in shown, (where, shown)


def test_simulate_help_names_real_paths_and_the_clip_estimate():
    shown = {
        action.dest: text
        for command, action, text in _options("simulations.cli")
        if command == "simulate"
    }
    assert "simulations/scenarios/" in shown["config"]
    assert (ROOT / "simulations" / "scenarios" / "default.toml").is_file()
    assert "--clip-quantile" in shown["clip"] and "median" not in shown["clip"]
    assert shown["state_dir"].endswith("(default: RUN_DIR/client-state)")
    assert shown["registry"].endswith("(default: none)")
