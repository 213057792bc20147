"""Which helper socket the thin path trusts with netns descriptors (issue 21 item 2):
cli/thin.py untrusted(), on real directories, sockets and symlinks."""

from __future__ import annotations

import os
import socket

import pytest

from cni_plugins.cli import thin


@pytest.fixture
def root_dir(tmp_path):
    """A directory chain only root can change (pytest's tmp dirs are root's, 0700)."""
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    return d


def bind(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def test_a_root_socket_in_root_only_directories(root_dir):
    with bind(root_dir / "h.sock"):
        assert thin.untrusted(str(root_dir / "h.sock")) is None
        assert thin.untrusted(str(root_dir / "." / ".." / "d" / "h.sock")) is None


@pytest.mark.parametrize("bits", [0o020, 0o002, 0o777])
def test_a_directory_others_can_write(root_dir, bits):
    os.chmod(root_dir, 0o755 | bits)
    with bind(root_dir / "h.sock"):
        assert "only root can write" in thin.untrusted(str(root_dir / "h.sock"))


def test_a_sticky_directory_of_roots_is_accepted(root_dir):
    os.chmod(root_dir, 0o1777)
    with bind(root_dir / "h.sock"):
        assert thin.untrusted(str(root_dir / "h.sock")) is None


def test_a_directory_or_socket_of_another_user(root_dir):
    with bind(root_dir / "h.sock"):
        os.chown(root_dir / "h.sock", 65534, 65534)
        assert "not a socket of root's" in thin.untrusted(str(root_dir / "h.sock"))
        os.chown(root_dir / "h.sock", 0, 0)
        os.chown(root_dir, 65534, 0)
        assert "only root can write" in thin.untrusted(str(root_dir / "h.sock"))


def test_symlinks_are_followed_and_their_targets_checked(root_dir, tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    (root_dir / "to-open").symlink_to(open_dir)
    (root_dir / "to-self").symlink_to(".")
    with bind(open_dir / "h.sock"), bind(root_dir / "h.sock"):
        assert "only root can write" in thin.untrusted(str(root_dir / "to-open" / "h.sock"))
        assert thin.untrusted(str(root_dir / "to-self" / "h.sock")) is None
        (root_dir / "link.sock").symlink_to("h.sock")  # the socket itself: never through a link
        assert "not a socket of root's" in thin.untrusted(str(root_dir / "link.sock"))
    (root_dir / "loop").symlink_to("loop")
    assert thin.untrusted(str(root_dir / "loop" / "h.sock")) is not None


def test_relative_paths_and_missing_sockets(root_dir, monkeypatch):
    monkeypatch.chdir(root_dir)
    with bind(root_dir / "h.sock"):
        assert thin.untrusted("h.sock") is None
    assert "cannot check" in thin.untrusted(str(root_dir / "gone.sock"))
    assert "not a socket" in thin.untrusted(str(root_dir) + "/")
