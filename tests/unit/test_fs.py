"""Directories with exact modes (issue 21 items 2 and 4): linux/fs.make_dirs and its users."""

from __future__ import annotations

import os
import stat

import pytest

from cni_plugins.linux.fs import make_dirs
from cni_plugins.runtime import cache


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("wanted", [0o700, 0o755])
def test_every_directory_made_has_the_mode(tmp_path, umask, wanted):
    """os.makedirs gave the parents 0777 minus the umask: 0777 under a runtime's umask 000."""
    make_dirs(str(tmp_path / "a" / "b" / "c"), wanted)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [wanted] * 3


def test_dot_dot_makes_what_the_kernel_walks_through(tmp_path, umask):
    """stateDir <d>/state/../other: opening <d>/state/../other/x needs <d>/state too (issue 21 item 4)."""
    make_dirs(str(tmp_path / "state" / ".." / "other"), 0o700)
    assert mode(tmp_path / "state") == 0o700 and mode(tmp_path / "other") == 0o700
    make_dirs(str(tmp_path / "other" / "."), 0o700)  # exists: nothing to do


def test_existing_directories_are_left_alone(tmp_path, umask):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp: not ours to change
    make_dirs(str(shared / "ours"), 0o700)
    make_dirs(str(shared), 0o700)
    assert mode(shared) == 0o1777 and mode(shared / "ours") == 0o700


def test_a_file_in_the_way_is_an_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError):
        make_dirs(str(tmp_path / "file"), 0o700)
    with pytest.raises(NotADirectoryError):
        make_dirs(str(tmp_path / "file" / "sub"), 0o700)


def test_libcni_cache_directories_are_private(tmp_path, umask):
    att = cache.CachedAttachment(container_id="c1", network="net1", ifname="eth0", config=b"{}")
    path = cache.write(str(tmp_path / "cni" / "cache"), att)
    assert [mode(tmp_path / p) for p in ("cni", "cni/cache", "cni/cache/results")] == [0o700] * 3
    assert mode(path) == 0o600

