"""The thin path (cli/thin.py) and the helper's request parsing, without a helper process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cni_plugins import __version__
from cni_plugins.cli import cnmd, thin
from cni_plugins.cni import request
from cni_plugins.linux import netns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stdin_bound_matches_the_protocol_layer():
    assert thin.MAX_STDIN == request.MAX_STDIN


def test_thin_module_imports_only_cheap_stdlib():
    """What every exec pays: no json/re/typing/dataclasses, no protocol layer, nothing heavy."""
    proc = subprocess.run(
        ["/usr/bin/python3", "-IS", "-X", "importtime", "-c",
         f"import sys; sys.path.insert(0, {ROOT!r}); import cni_plugins.cli.thin"],
        capture_output=True, check=True,
    )
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    ours = {m for m in modules if m.startswith("cni_plugins")}
    assert ours == {"cni_plugins", "cni_plugins.cli", "cni_plugins.cli.thin"}
    assert not modules & {"json", "re", "typing", "dataclasses", "socket", "pyroute2", "pydantic"}, modules
    assert "os" not in modules  # ~1 ms of every exec (with -S nothing else imports it)
    # each a few tenths of a ms of every exec: framing by int.to_bytes, the netns type checked
    # by the helper, annotations valid at run time
    assert not modules & {"struct", "_struct", "fcntl", "__future__"}, sorted(modules)


def test_the_executable_imports_no_os_on_the_thin_path(tmp_path):
    """bin/cnm served by a helper (here a stand-in that answers every request) imports
    neither os nor what it would pull in."""
    import struct
    import threading

    path = str(tmp_path / "h.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            out = b'{"cniVersion": "1.0.0"}\n'
            conn.sendall(b"RS" + struct.pack("!iI", 0, len(out)) + out)

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin", thin.SOCKET_ENV: path}
    proc = subprocess.run(["/usr/bin/python3", "-IS", "-X", "importtime", os.path.join(ROOT, "bin", "cnm-none")],
                          env=env, input=b"{}", capture_output=True, timeout=60)
    server.close()
    assert proc.returncode == 0 and proc.stdout == b'{"cniVersion": "1.0.0"}\n', proc.stderr
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert "cni_plugins.cli.thin" in modules
    assert not modules & {"os", "posixpath", "_collections_abc", "stat", "struct", "fcntl"}, sorted(modules)


def test_request_round_trip_with_descriptors():
    env = {"CNI_COMMAND": "ADD", "ODD": os.fsdecode(b"\xff\xfe"), "EMPTY": "", "EQ": "a=b=c"}
    stdin = b'{"cniVersion":"1.0.0"}' * 1000
    data = thin.encode_request("cnm-none", env, stdin, True)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    fds = [r, r, w]
    try:
        thin.send_with_fds(a, data, fds)
        fields, got = cnmd.read_request(b)
        assert len(got) == 3
        for fd in got:
            os.close(fd)
        build, name, env_blob, stdin_got, flags = fields
        assert build.decode() == thin.build_id()
        assert name == b"cnm-none" and stdin_got == stdin and flags == b"netns"
        assert cnmd.decode_env(env_blob) == env
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_helper_rejects_bad_frames():
    for data in (b"XXXX" + b"\0" * 8, b"CNMD" + b"\0\0\0\x09" + b"\0\0\0\x01", b"CNMD\0\0\0\x01\0\0\1\0"):
        a, b = socket.socketpair()
        try:
            a.sendall(data)
            with pytest.raises(cnmd.Refused):
                cnmd.read_request(b)
        finally:
            a.close()
            b.close()


def test_checkout_build_id_names_the_tree(tmp_path, monkeypatch):
    """One stat per exec: the tree's device, inode and path (the helper watches its contents)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    monkeypatch.setattr(thin, "package_dir", lambda: str(pkg))
    first = thin.build_id()
    st = os.stat(pkg)
    assert first == thin.build_id() == f"{thin.PROTOCOL}/{__version__}/checkout:{st.st_dev}:{st.st_ino}:{pkg}"
    pkg.rename(tmp_path / "old")
    pkg.mkdir()  # another tree at the same path
    assert thin.build_id() != first


def test_frozen_build_id_is_read_from_the_bundle(tmp_path, monkeypatch):
    (tmp_path / thin.BUILD_ID_FILE).write_text("abc123\n")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert thin.build_id().endswith("/abc123")


@pytest.mark.parametrize("value", ["", "off", "none"])
def test_helper_can_be_disabled(value):
    assert thin.socket_path({thin.SOCKET_ENV: value}) is None
    assert thin.via_helper("cnm-none", {thin.SOCKET_ENV: value, "CNI_COMMAND": "VERSION"}, b"") is None


def test_absent_socket_and_unopenable_netns_mean_in_process(tmp_path):
    env = {thin.SOCKET_ENV: str(tmp_path / "nothing.sock"), "CNI_COMMAND": "VERSION"}
    assert thin.via_helper("cnm-none", env, b"") is None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "s.sock"))
    listener.listen(1)
    try:  # a netns we cannot open: decided before connecting
        env = {thin.SOCKET_ENV: str(tmp_path / "s.sock"), "CNI_NETNS": str(tmp_path / "no-netns")}
        assert thin.via_helper("cnm-none", env, b"") is None
        assert thin.open_netns(str(tmp_path)) is None  # a directory is no netns
        pid = thin.open_netns("/proc/self/ns/pid")  # nsfs: sent, and the helper refuses it
        assert pid is not None and not netns.is_netns_fd(pid)
        os.close(pid)
        fd = thin.open_netns("/proc/self/ns/net")
        assert fd is not None
        os.close(fd)
    finally:
        listener.close()


def test_committed_failure_names_the_config_version():
    out, code = thin.committed_failure("ADD", b'{"cniVersion":"0.3.1"}', "EOFError")
    assert code == 1 and b'"code": 11' in out and b'"cniVersion": "0.3.1"' in out
    out, _ = thin.committed_failure("ADD", b"garbage", "x")
    assert b'"cniVersion": "1.1.0"' in out


def test_frozen_environment_is_restored(monkeypatch):
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/cni/bin/cnm-cni/_internal:/orig")
    monkeypatch.setenv("LD_LIBRARY_PATH_ORIG", "/orig")
    monkeypatch.setenv("_PYI_ARCHIVE_FILE", "/opt/cni/bin/cnm-cni/cnm")
    monkeypatch.setenv("_PYI_PARENT_PROCESS_LEVEL", "1")
    thin.restore_frozen_environment()
    assert os.environ["LD_LIBRARY_PATH"] == "/orig"
    assert "LD_LIBRARY_PATH_ORIG" not in os.environ
    assert not [k for k in os.environ if k.startswith("_PYI_")]
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/cni/bin/cnm-cni/_internal")
    thin.restore_frozen_environment()
    assert "LD_LIBRARY_PATH" not in os.environ


def test_frozen_environment_is_restored_without_os():
    """In the bundle nothing has imported os when the thin path starts (packaging/bootstrap/):
    the environment is restored through posix, for children (C environ) and for a later os."""
    script = (
        f"import sys, posix; sys.path.insert(0, {ROOT!r}); sys.frozen = True\n"
        "from cni_plugins.cli import thin\n"
        "thin.restore_frozen_environment()\n"
        "print('os' in sys.modules, thin.environ().get('LD_LIBRARY_PATH'), flush=True)\n"
        "posix.system('env')\n"
        "import os\n"
        "print('later os', os.environ.get('LD_LIBRARY_PATH'), sorted(k for k in os.environ if k.startswith('_PYI')))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/b/_internal:/orig", "LD_LIBRARY_PATH_ORIG": "/orig",
           "_PYI_ARCHIVE_FILE": "/b/cnm", "_PYI_PARENT_PROCESS_LEVEL": "1", "KEEP": "x"}
    proc = subprocess.run(["/usr/bin/python3", "-IS", "-c", script], env=env, capture_output=True, check=True)
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "False /orig"
    child = dict(line.split("=", 1) for line in lines[1:-1])
    assert child["LD_LIBRARY_PATH"] == "/orig" and child["KEEP"] == "x"
    assert "LD_LIBRARY_PATH_ORIG" not in child and not [k for k in child if k.startswith("_PYI_")]
    assert lines[-1] == "later os /orig []"
    env.pop("LD_LIBRARY_PATH_ORIG")
    proc = subprocess.run(["/usr/bin/python3", "-IS", "-c", script], env=env, capture_output=True, check=True)
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "False None" and not [line for line in lines if line.startswith("LD_LIBRARY_PATH")]
