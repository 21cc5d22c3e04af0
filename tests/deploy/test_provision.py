"""Provisioning: a CA that signs the coordinator's certificate for the right names, site keys in
the format Flower loads, owner-only private keys, no silent overwrite, add/revoke, real TLS."""

import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from deploy.provision import BundleExists, add_site, authorized_sites, provision, revoke_site

HOSTS = ["localhost", "127.0.0.1", "coordinator.example.org"]


@pytest.fixture
def bundles(tmp_path):
    provision(tmp_path, HOSTS, ["st-mary", "general"])
    return tmp_path


def test_server_certificate_is_signed_by_the_ca_for_every_host(bundles):
    ca = x509.load_pem_x509_certificate((bundles / "coordinator" / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((bundles / "coordinator" / "server.pem").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "coordinator.example.org"}
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_site_keys_are_openssh_ec_keys_flower_accepts(bundles):
    from flwr.cli.supernode.register import try_load_public_key

    for name in ("st-mary", "general"):
        bundle = bundles / "sites" / name
        private = load_ssh_private_key((bundle / "auth.key").read_bytes(), password=None)
        public = load_ssh_public_key((bundle / "auth.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert try_load_public_key(bundle / "auth.pub")  # what `flwr supernode register` runs
    assert [n for n, _ in authorized_sites(bundles / "coordinator")] == ["st-mary", "general"]


def test_private_keys_are_owner_only(bundles):
    for path in [bundles / "ca" / "ca.key", bundles / "coordinator" / "server.key", *bundles.glob("sites/*/auth.key")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_existing_bundles_are_not_overwritten_unless_forced(bundles):
    before = (bundles / "coordinator" / "server.key").read_bytes()
    with pytest.raises(BundleExists, match=r"already exist.*add-site.*--force"):
        provision(bundles, HOSTS, ["st-mary"])
    assert (bundles / "coordinator" / "server.key").read_bytes() == before
    provision(bundles, HOSTS, ["st-mary"], force=True)
    assert (bundles / "coordinator" / "server.key").read_bytes() != before


def test_add_and_revoke_sites(bundles):
    add_site(bundles, "north")
    assert [n for n, _ in authorized_sites(bundles / "coordinator")] == ["st-mary", "general", "north"]
    with pytest.raises(BundleExists, match="already provisioned"):
        add_site(bundles, "north")
    revoke_site(bundles, "general")
    assert [n for n, _ in authorized_sites(bundles / "coordinator")] == ["st-mary", "north"]
    assert (bundles / "sites" / "general.revoked").is_dir()
    with pytest.raises(ValueError, match="not provisioned"):
        revoke_site(bundles, "general")


@pytest.mark.parametrize(
    ("hosts", "sites", "message"),
    [
        ([], ["a"], "at least one host"),
        (["x y"], ["a"], "neither an IP"),
        (["h"], ["St Mary"], "lower-case"),
        (["h"], ["a", "a"], "unique"),
    ],
)
def test_bad_arguments(tmp_path, hosts, sites, message):
    with pytest.raises(ValueError, match=message):
        provision(tmp_path, hosts, sites)


def _tls_handshake(bundles, trust, server_hostname):
    """A real TLS server on a loopback port with the coordinator's certificate; one client."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(bundles / "coordinator" / "server.pem", bundles / "coordinator" / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(trust))
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.send(b"x")
    finally:
        thread.join(5)
        listener.close()


def test_tls_handshake_succeeds_with_the_consortium_ca_and_fails_with_another(bundles, tmp_path):
    _tls_handshake(bundles, bundles / "sites" / "st-mary" / "ca.pem", "localhost")
    other = tmp_path / "other"
    provision(other, HOSTS, [])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _tls_handshake(bundles, other / "ca" / "ca.pem", "localhost")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|doesn't match"):
        _tls_handshake(bundles, bundles / "sites" / "st-mary" / "ca.pem", "evil.example.org")
