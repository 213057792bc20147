"""The one container image of the e2e tests, made offline from Debian's busybox-static (nothing
is pulled): /bin/busybox, a link per applet, /etc/passwd, the empty dirs a runtime mounts on,
and /www/index.html for the HTTP tests.

`rootfs_tar` is the plain root filesystem (what `podman import` takes); `oci_archive` wraps it
as a one-layer OCI image-layout tar (what `ctr image import` takes), named in the index's
`io.containerd.image.name` annotation; its default command sleeps forever (a pod's sandbox,
"pause", container only has to stay alive).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile

BUSYBOX = "/bin/busybox"  # Debian busybox-static: no shared libraries needed
GREETING = "hello from cnm-cni\n"  # /www/index.html
ANNOTATION_NAME = "io.containerd.image.name"
ANNOTATION_REF = "org.opencontainers.image.ref.name"


def applets() -> list[str]:
    out = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout
    return [a for a in out.split() if a and "/" not in a and a != "busybox"]


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    tar.addfile(info, io.BytesIO(data))


def rootfs_tar(path: str) -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "proc", "sys", "etc", "tmp", "root", "run", "var", "www"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for name in applets():
            info = tarfile.TarInfo(f"bin/{name}")
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "busybox", 0o777
            tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
            ("www/index.html", GREETING),
        ):
            _add_file(tar, name, text.encode())
    return path


def _descriptor(media_type: str, blob: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(), "size": len(blob), **extra}


def oci_archive(path: str, name: str, cmd: list[str] | None = None) -> str:
    """Write an OCI image-layout tar for image `name` (e.g. "registry.test/cnm/pause:1") to `path`."""
    rootfs_tar(path + ".layer")
    with open(path + ".layer", "rb") as f:
        layer = f.read()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd or ["/bin/sleep", "infinity"], "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        },
        sort_keys=True,
    ).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                _descriptor(
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest,
                    annotations={ANNOTATION_NAME: name, ANNOTATION_REF: tag},
                    platform={"architecture": "amd64", "os": "linux"},
                )
            ],
        }
    ).encode()
    with tarfile.open(path, "w") as tar:
        _add_file(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_file(tar, "index.json", index)
        for blob in (layer, config, manifest):
            _add_file(tar, f"blobs/sha256/{hashlib.sha256(blob).hexdigest()}", blob)
    return path
