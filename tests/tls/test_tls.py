"""TLS on the client port: etcdctl 3.5.1 with client certificates against Basalt and, for the
same outcome, against etcd 3.5.1 started with the same flags.

Certificates are made per module in a temporary folder (tests/tls/pki.py). Every refusal is
followed by a request with the right certificate: the server must keep serving.
"""

import json
import shutil
import socket
import ssl
import sys
import subprocess
import tempfile
from pathlib import Path

import pytest
from cryptography import x509

from harness import Server, etcd_bin
from pki import Pki

# The cluster tests import their harness as the module `cluster` from their own folder; this
# file does the same so the whole suite sees one module under that name.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cluster"))
from cluster import Cluster  # noqa: E402

KINDS = ["basalt", "etcd"]
# Long enough for a loaded 2-core machine, short enough that five refusals stay quick.
DIAL_TIMEOUT = "--dial-timeout=2s"
COMMAND_TIMEOUT = "--command-timeout=4s"


@pytest.fixture(scope="module")
def pki():
    with tempfile.TemporaryDirectory(prefix="basalt-tls-") as folder:
        yield Pki(Path(folder))


def https_server(kind, flags):
    """A server whose one client URL is https://."""
    return Server(kind, flags, scheme="https")


def cert_auth_flags(pki):
    return [
        "--cert-file", pki.server.cert_file,
        "--key-file", pki.server.key_file,
        "--trusted-ca-file", pki.ca.cert_file,
        "--client-cert-auth",
    ]


@pytest.fixture(scope="module", params=KINDS)
def cert_auth_server(request, pki):
    server = https_server(request.param, cert_auth_flags(pki)).start()
    yield server
    server.cleanup()


def etcdctl(url, *args, cacert=None, client=None, extra=()):
    tls = ["--cacert", cacert] if cacert else []
    if client is not None:
        tls += ["--cert", client.cert_file, "--key", client.key_file]
    result = subprocess.run(
        [etcd_bin("etcdctl"), "--endpoints", url, DIAL_TIMEOUT, COMMAND_TIMEOUT, *tls, *extra, *args],
        capture_output=True,
        text=True,
        env={"ETCDCTL_API": "3"},
        timeout=30,
    )
    return result.returncode, result.stdout, result.stderr


def good_etcdctl(server, pki, *args):
    return etcdctl(server.url, *args, cacert=pki.ca.cert_file, client=pki.client)


def test_etcdctl_with_the_right_client_certificate_works(cert_auth_server, pki):
    assert good_etcdctl(cert_auth_server, pki, "put", "tls-key", "v1")[:2] == (0, "OK\n")
    assert good_etcdctl(cert_auth_server, pki, "get", "tls-key")[:2] == (0, "tls-key\nv1\n")
    code, out, _ = good_etcdctl(cert_auth_server, pki, "endpoint", "health")
    assert (code, f"{cert_auth_server.url} is healthy" in out) == (0, True), out
    code, out, _ = good_etcdctl(cert_auth_server, pki, "endpoint", "status")
    assert (code, out.startswith(f"{cert_auth_server.url}, ")) == (0, True), out


# (case, endpoint host, client certificate in the Pki, what etcdctl says when the reason shows)
REFUSALS = [
    ("plain text to the TLS port", "http://127.0.0.1", "client", None),
    ("no client certificate", "https://127.0.0.1", None, None),
    ("client certificate from another CA", "https://127.0.0.1", "foreign_client", None),
    ("expired client certificate", "https://127.0.0.1", "expired_client", None),
    ("server certificate without the dialed name", "https://localhost", "client",
     "wanted to match localhost"),
]


@pytest.mark.parametrize("case,host,client,reason", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refused_clients_fail_and_the_server_keeps_serving(cert_auth_server, pki, case, host, client,
                                                          reason):
    url = f"{host}:{cert_auth_server.port}"
    code, out, err = etcdctl(url, "get", "tls-key", cacert=pki.ca.cert_file,
                             client=getattr(pki, client) if client else None)
    assert code != 0, f"{case}: {out}"
    if reason:
        assert reason in err, err
    assert cert_auth_server.alive()
    assert good_etcdctl(cert_auth_server, pki, "put", "after-refusal", case)[:2] == (0, "OK\n")


@pytest.mark.parametrize("greeting", [
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", id="h2-preface"),
    pytest.param(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", id="http1-get"),
])
def test_plain_text_on_the_tls_port_is_closed_at_once(cert_auth_server, pki, greeting):
    with socket.create_connection(("127.0.0.1", cert_auth_server.port), timeout=5) as conn:
        conn.sendall(greeting)
        # Whatever the server answers (a TLS alert, Go's 400), it must then close: recv
        # reaching EOF within the timeout proves there is no hang.
        while conn.recv(4096):
            pass
    assert good_etcdctl(cert_auth_server, pki, "get", "tls-key")[0] == 0


def client_context(pki, client=None):
    context = ssl.create_default_context(cafile=pki.ca.cert_file)
    client = client or pki.client
    context.load_cert_chain(client.cert_file, client.key_file)
    return context


def tls_connect(port, context):
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.parametrize("path,body_start", [
    ("/health", b'{"health":"true"'),
    ("/version", b'{"etcdserver":"3.5.1"'),
    ("/metrics", b"# HELP"),
])
def test_http_endpoints_answer_over_tls(cert_auth_server, pki, path, body_start):
    with tls_connect(cert_auth_server.port, client_context(pki)) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body_start in body, body[:100]


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
def test_http_endpoints_answer_over_h2_as_curl_negotiates_it(cert_auth_server, pki):
    result = subprocess.run(
        ["curl", "-sS", "--http2", "-w", "\\n%{http_version} %{http_code}",
         "--cacert", pki.ca.cert_file, "--cert", pki.client.cert_file, "--key", pki.client.key_file,
         f"{cert_auth_server.url}/health"],
        capture_output=True, text=True, timeout=30,
    )
    body, _, version_code = result.stdout.rpartition("\n")
    assert (version_code, body) == ("2 200", '{"health":"true","reason":""}'), result


def served_serial(port, pki):
    with tls_connect(port, client_context(pki)) as conn:
        return x509.load_der_x509_certificate(conn.getpeercert(binary_form=True)).serial_number


@pytest.mark.parametrize("kind", KINDS)
def test_renewed_certificate_files_are_served_to_new_connections(kind, tmp_path):
    pki = Pki(tmp_path / "pki")
    server = https_server(kind, cert_auth_flags(pki)).start()
    try:
        assert served_serial(server.port, pki) == pki.server.cert.serial_number
        renewed = pki.renew_server()
        assert served_serial(server.port, pki) == renewed.cert.serial_number
        assert good_etcdctl(server, pki, "put", "after-reload", "v")[:2] == (0, "OK\n")
    finally:
        server.cleanup()


@pytest.mark.parametrize("kind", KINDS)
def test_auto_tls_serves_a_self_signed_certificate_for_the_listen_address(kind):
    server = https_server(kind, ["--auto-tls"]).start()
    try:
        code, out, err = etcdctl(server.url, "put", "k", "v", extra=["--insecure-transport=false", "--insecure-skip-tls-verify"])
        assert (code, out) == (0, "OK\n"), err
        pem = (server.dir / "data" / "fixtures" / "client" / "cert.pem").read_bytes()
        names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    finally:
        server.cleanup()


def test_version_and_cipher_suite_flags_bound_the_handshake(pki):
    server = https_server("basalt", cert_auth_flags(pki) + [
        "--tls-max-version", "TLS1.2",
        "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ]).start()
    try:
        with tls_connect(server.port, client_context(pki)) as conn:
            assert (conn.version(), conn.cipher()[0]) == ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384")
        tls13_only = client_context(pki)
        tls13_only.minimum_version = ssl.TLSVersion.TLSv1_3
        with pytest.raises(ssl.SSLError):
            tls_connect(server.port, tls13_only).close()
        assert good_etcdctl(server, pki, "put", "k", "v")[:2] == (0, "OK\n")
    finally:
        server.cleanup()


# (case, flags besides an https:// client URL, what the refusal says)
STARTUP_REFUSALS = [
    ("https without a certificate", [],
     "TLS key/cert (--cert-file, --key-file) must be provided for client url https://"),
    ("certificate without its key", ["--cert-file", "{server}"], "must be given together"),
    ("client-cert-auth without a CA", ["--cert-file", "{server}", "--key-file", "{server_key}",
                                       "--client-cert-auth"], "needs a trusted CA file"),
    ("cipher suite rustls lacks", ["--cert-file", "{server}", "--key-file", "{server_key}",
                                   "--cipher-suites", "TLS_RSA_WITH_AES_128_CBC_SHA"],
     'unexpected TLS cipher suite "TLS_RSA_WITH_AES_128_CBC_SHA"'),
    ("TLS 1.1", ["--tls-min-version", "TLS1.1"], 'unexpected TLS version "TLS1.1"'),
    ("min above max", ["--cert-file", "{server}", "--key-file", "{server_key}",
                       "--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"],
     "min version is above the max version"),
    ("key that is not a key", ["--cert-file", "{server}", "--key-file", "{server}"],
     "no private key found"),
]


@pytest.mark.parametrize("case,flags,message", STARTUP_REFUSALS, ids=[r[0] for r in STARTUP_REFUSALS])
def test_bad_tls_settings_stop_start_up_with_a_reason(pki, case, flags, message):
    files = {"server": pki.server.cert_file, "server_key": pki.server.key_file}
    server = https_server("basalt", [flag.format(**files) for flag in flags])
    try:
        result = subprocess.run(server.args, capture_output=True, text=True, timeout=20)
        assert result.returncode != 0, case
        assert message in result.stderr, result.stderr
    finally:
        server.cleanup()


def peer_port_answer(port, pki, client):
    """"accepted" when the TLS handshake passes and the server then waits for the peer
    protocol, "refused" when it ends the connection."""
    context = ssl.create_default_context(cafile=pki.ca.cert_file)
    if client is not None:
        context.load_cert_chain(client.cert_file, client.key_file)
    try:
        with tls_connect(port, context) as conn:
            conn.settimeout(1)
            # TLS 1.3 verifies the client after the client's side of the handshake is done:
            # a refusal shows on the first read.
            return "refused" if conn.recv(1) == b"" else "answered"
    except TimeoutError:
        return "accepted"
    except (ssl.SSLError, ConnectionError):
        return "refused"


class PeerTlsCluster(Cluster):
    """The cluster harness with https:// peer URLs."""

    def new_member(self):
        member = super().new_member()
        member.peer_url = member.peer_url.replace("http://", "https://")
        return member


@pytest.mark.parametrize("kind", KINDS)
def test_members_replicate_over_tls_peer_urls(kind, pki):
    flags = [
        "--peer-cert-file", pki.peer.cert_file,
        "--peer-key-file", pki.peer.key_file,
        "--peer-trusted-ca-file", pki.ca.cert_file,
        "--peer-client-cert-auth",
    ]
    cluster = PeerTlsCluster(kind, size=3, extra_flags=flags).start()
    try:
        leader = cluster.leader()
        follower = next(m for m in cluster.members if m is not leader)
        ctl = lambda m, *args: etcdctl(f"http://{m.endpoint}", *args)[:2]
        assert ctl(leader, "put", "over-tls", "v") == (0, "OK\n")
        # A linearizable read on a follower needs the leader's answer over the peer link.
        assert ctl(follower, "get", "over-tls", "--print-value-only") == (0, "v\n")
        code, members = ctl(follower, "member", "list")
        assert code == 0 and members.count("https://127.0.0.1:") == 3, members
        # --peer-client-cert-auth: only a certificate from the peer CA gets through.
        answers = {name: peer_port_answer(leader.peer_port, pki, client) for name, client in
                   [("peer", pki.peer), ("other CA", pki.foreign_client), ("none", None)]}
        assert answers == {"peer": "accepted", "other CA": "refused", "none": "refused"}
        assert ctl(follower, "put", "after-refusals", "v") == (0, "OK\n")
    finally:
        cluster.close()


@pytest.mark.skipif(not shutil.which("curl"), reason="curl is not installed")
@pytest.mark.parametrize("http_version", ["--http1.1", "--http2"])
def test_json_gateway_answers_over_tls_on_either_http_version(cert_auth_server, pki, http_version):
    """Basalt's gateway runs in-process, so it serves under --client-cert-auth; etcd 3.5.1's
    dials its own port without a client certificate and answers 503 ("bad certificate")."""
    if cert_auth_server.kind == "etcd":
        pytest.skip("etcd 3.5.1's gateway cannot dial itself under --client-cert-auth")
    def post(path, body):
        result = subprocess.run(
            ["curl", "-sS", http_version, "-w", "\\n%{http_version} %{http_code}", "-X", "POST", "-d", body,
             "--cacert", pki.ca.cert_file, "--cert", pki.client.cert_file, "--key", pki.client.key_file,
             f"{cert_auth_server.url}{path}"],
            capture_output=True, text=True, timeout=30,
        )
        body, _, version_code = result.stdout.rpartition("\n")
        return version_code, json.loads(body)

    expected_version = "2" if http_version == "--http2" else "1.1"
    version_code, got = post("/v3/kv/put", '{"key":"Z3c=","value":"MQ=="}')
    assert version_code == f"{expected_version} 200", got
    version_code, got = post("/v3/kv/range", '{"key":"Z3c="}')
    assert version_code == f"{expected_version} 200"
    assert got["kvs"][0]["value"] == "MQ=="
    version_code, got = post("/v3/kv/range", '{"key":5}')
    assert version_code == f"{expected_version} 400"
    assert got["code"] == 3
