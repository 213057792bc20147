"""etcd over TLS with client certificates (issue 16 item 5): a CA, a server and a client
certificate made here with openssl; the client with its certificate gets in, without one
(or with one of another CA) it does not; cnm-overlay works over https."""

from __future__ import annotations

import subprocess

import pytest

from cni_plugins.drivers.overlay import etcd
from support.common import unique
from support.etcd import Cluster, free_port
from support.overlay import World, underlay_net


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "1", "-subj", f"/CN={name}", cwd=d)


def make_cert(d, ca, name, san=""):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text((f"subjectAltName={san}\n" if san else "") + "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", str(ext), cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    make_cert(d, "ca", "server", f"IP:127.0.0.1,IP:{underlay_net()}.254")
    make_cert(d, "ca", "client")
    make_cert(d, "otherca", "stranger")
    return d


def start_tls(pki, **kw):
    cluster = Cluster(1, tls={"ca": str(pki / "ca.pem"), "server_cert": str(pki / "server.pem"),
                              "server_key": str(pki / "server.key")}, port=free_port(), **kw)
    cluster.start_member(cluster.members[0])
    return cluster


@pytest.fixture
def tls_cluster(pki):
    cluster = start_tls(pki)
    try:
        wait_ready_tls(cluster, pki)
        yield cluster
    finally:
        cluster.stop()


def test_client_certificate_gets_in(tls_cluster, pki):
    c = tls_cluster.client(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                           key_file=str(pki / "client.key"))
    key = f"/{unique('t')}".encode()
    assert c.create(key, b"v") == (True, None)
    assert c.get(key).value == b"v"


@pytest.mark.parametrize("cert", [None, "stranger"])
def test_no_or_foreign_certificate_is_refused(tls_cluster, pki, cert):
    kw = {"ca_file": str(pki / "ca.pem")}
    if cert:
        kw.update(cert_file=str(pki / f"{cert}.pem"), key_file=str(pki / f"{cert}.key"))
    c = tls_cluster.client(timeout=2, **kw)
    with pytest.raises(etcd.Unavailable):
        c.put(b"/x", b"y")


def test_server_of_another_ca_is_refused(tls_cluster, pki):
    c = tls_cluster.client(timeout=2, ca_file=str(pki / "otherca.pem"), cert_file=str(pki / "client.pem"),
                           key_file=str(pki / "client.key"))
    with pytest.raises(etcd.Unavailable) as err:
        c.get(b"/x")
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_overlay_add_over_tls(pki, netns, tmp_path):
    """Nodes reach etcd over TCP on the underlay (etcd listens on the underlay bridge's address)."""
    world = World(netns, tmp_path, None)
    tls_cluster = start_tls(pki, address=world.service_address, netns=world.underlay_ns)
    world.cluster = tls_cluster
    try:
        wait_ready_tls(tls_cluster, pki)
        n = world.add_node()
        store = {"endpoints": tls_cluster.endpoints, "prefix": world.prefix, "caFile": str(pki / "ca.pem"),
                 "certFile": str(pki / "client.pem"), "keyFile": str(pki / "client.key")}
        n.add_pod(store=store)
        assert n.state()["subnet"]
        # the state file names the files, and holds no key material
        text = open(__import__("cni_plugins.drivers.overlay.state", fromlist=["path"]).path(
            n.env["CNM_STATE_DIR"], world.network)).read()
        assert "PRIVATE KEY" not in text and str(pki / "client.key") in text
        # Another store configuration (no client certificate) is not the one the lease was
        # claimed with, so the ADD asks etcd, which refuses it, and says why: it never falls
        # back on the lease of other settings (another store may give that subnet to a node).
        run = n.run("ADD", n.conf(store=dict(store, certFile="", keyFile="")), world.netns("cnmp"), "c2")
        assert run.rc != 0 and run.json["code"] == 11 and "CERTIFICATE" in run.json.get("details", ""), run
        pod_ns = world.netns("cnmp")
        run = n.run("ADD", n.conf(store=store), pod_ns, "c3")
        assert run.rc == 0, run
        assert n.run("DEL", n.conf(store=store), pod_ns, "c3").rc == 0
    finally:
        world.cleanup()
        tls_cluster.stop()


def wait_ready_tls(cluster, pki):
    """Until the member answers a client with a certificate (from the underlay's netns)."""
    import time

    from support.common import in_netns

    client = None

    def put():
        nonlocal client
        client = client or cluster.client(timeout=2, ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"),
                                          key_file=str(pki / "client.key"))
        client.put(b"/ready", b"1")

    deadline = time.monotonic() + 30
    while True:
        try:
            in_netns(cluster.netns, put) if cluster.netns else put()
            return
        except etcd.EtcdError:
            client = None
            assert time.monotonic() < deadline and cluster.members[0].alive, cluster.logs()
            time.sleep(0.05)
