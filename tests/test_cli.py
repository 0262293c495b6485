"""The dispatcher: every command is reachable and usage errors are one line."""

import subprocess
import sys

from booru_embed.cli import COMMANDS


def test_top_level_help_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "booru_embed.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_every_command_has_help():
    for command in COMMANDS:
        result = subprocess.run(
            [sys.executable, "-m", "booru_embed.cli", command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
        assert "usage: booru-embed " + command in result.stdout
