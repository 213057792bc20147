"""Container images for the e2e tests, made offline from Debian's busybox-static.

`rootfs_tar` is a plain root filesystem (what `podman import` takes);
`docker_archive` wraps it as a one-layer image (what `ctr image import` takes).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

BUSYBOX = "/bin/busybox"  # Debian busybox-static: no shared libraries needed


def applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return [a for a in out.split() if a and "/" not in a and a != "busybox"]


def rootfs_tar(path: str) -> str:
    """bin/busybox + a link per applet, /etc/passwd, and the empty dirs a runtime mounts on."""
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "dev", "proc", "sys", "etc", "tmp", "root", "run", "var", "www"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for name in applets():
            info = tarfile.TarInfo(f"bin/{name}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
            ("www/index.html", "hello from cnm-cni\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def docker_archive(rootfs: str, path: str, ref: str, cmd: list[str] | None = None) -> str:
    """A `docker save` style archive of one layer, tagged `ref` (e.g. docker.io/library/x:y)."""
    with open(rootfs, "rb") as f:
        layer = f.read()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd or ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in (("layer.tar", layer), (config_name, config), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path
