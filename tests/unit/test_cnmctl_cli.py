"""cnmctl's command line as an operator meets it (issue 12 item 14): options before, between
or after positionals, as docker's CLI takes them, and help texts that speak of the node, not
of our source files."""

from __future__ import annotations

import argparse
import json
import os
import subprocess

import pytest

from cni_plugins.cli import cnmctl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(ROOT, "bin")


def parse(*argv: str):
    return cnmctl.build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ("network", "inspect", "web", "--format", "json"),
    ("network", "inspect", "--format", "json", "web"),
    ("network", "inspect", "-f", "json", "web", "--state-dir", "/tmp/s"),
])
def test_network_inspect_takes_format_anywhere(argv):
    """Issue 12 item 14: `cnmctl network inspect NAME --format json` was a usage error."""
    opts = parse(*argv)
    assert opts.names == ["web"] and opts.format == "json"


def test_options_between_positionals():
    opts = parse("network", "inspect", "a", "--state-dir", "/tmp/s", "b")
    assert opts.names == ["a", "b"] and opts.state_dir == "/tmp/s"
    opts = parse("sandbox", "inspect", "x", "--format", "json", "y")
    assert opts.ids == ["x", "y"]


@pytest.mark.parametrize("argv, expect", [
    (("run", "web", "--network", "n1", "-p", "8080:80"), {"name": "web", "network": "n1", "publish": ["8080:80"]}),
    (("run", "--network", "n1", "web"), {"name": "web", "network": "n1"}),
    (("gc", "n1", "--dry-run"), {"network": "n1", "dry_run": True}),
    (("gc", "--dry-run", "n1"), {"network": "n1", "dry_run": True}),
    (("gc", "--format", "json"), {"network": None, "format": "json"}),
    (("endpoint", "ls", "--network", "n1", "-f", "json"), {"network": "n1", "format": "json"}),
    (("network", "ls", "--format", "json"), {"format": "json"}),
    (("doctor", "-v", "--format", "json"), {"verbose": True, "format": "json"}),
    (("add", "n1", "/run/netns/x"), {"network": "n1", "netns": "/run/netns/x"}),
])
def test_every_command_parses_options_either_side(argv, expect):
    opts = parse(*argv)
    for key, value in expect.items():
        assert getattr(opts, key) == value, (key, opts)


def every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def test_no_help_text_names_a_source_file():
    """Issue 12 item 14: `cnmctl gc --help` showed `cli/nodegc.py`."""
    parsers = list(every_parser(cnmctl.build_parser()))
    assert len(parsers) > 15
    for parser in parsers:
        text = parser.format_help()
        assert ".py" not in text and "cli/" not in text and "cni_plugins" not in text, (parser.prog, text)


def test_through_the_executable(tmp_path):
    """The same from a shell: exit 0 and JSON on stdout."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.conflist").write_text(json.dumps(
        {"cniVersion": "1.0.0", "name": "web", "plugins": [{"type": "cnm-none"}]}))
    env = dict(os.environ, NETCONFPATH=str(conf), CNM_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.run([os.path.join(BIN, "cnmctl"), "network", "inspect", "web", "--format", "json"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [n["Name"] for n in json.loads(proc.stdout)] == ["web"]
    help_text = subprocess.run([os.path.join(BIN, "cnmd"), "--help"], capture_output=True, text=True).stdout
    assert ".py" not in help_text and "cli/" not in help_text
