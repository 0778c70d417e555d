"""Certificates for the TLS tests, made fresh in a temporary folder: a CA, a server certificate
for 127.0.0.1, client certificates good and bad, all ECDSA P-256 (quick to make)."""

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


class Issued:
    """A certificate and its key, written as PEM files."""

    def __init__(self, key, cert, cert_file: Path, key_file: Path):
        self.key, self.cert = key, cert
        self.cert_file, self.key_file = str(cert_file), str(key_file)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, key, cert) -> Issued:
    cert_file, key_file = folder / f"{stem}.pem", folder / f"{stem}-key.pem"
    # Written beside, then renamed into place: a server that reloads never reads half a file.
    for path, data in (
        (key_file, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())),
        (cert_file, cert.public_bytes(serialization.Encoding.PEM)),
    ):
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return Issued(key, cert, cert_file, key_file)


def make_ca(folder: Path, stem: str, common_name: str) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DAY)
        .not_valid_after(now + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(folder, stem, key, cert)


def issue(folder: Path, stem: str, ca: Issued, common_name: str, *, server_ips=(),
          server_dns=(), client=False, expired=False) -> Issued:
    """A leaf certificate signed by `ca`: a server one when it names IPs or DNS names, a client
    one when `client`; `expired` ended yesterday."""
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = (now - 10 * DAY, now - DAY) if expired else (now - DAY, now + 30 * DAY)
    usages = []
    if server_ips or server_dns:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    names = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
    names += [x509.DNSName(name) for name in server_dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return _write(folder, stem, key, cert)


class Pki:
    """Everything the tests need, in `folder`."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ca = make_ca(folder, "ca", "basalt-test-ca")
        self.other_ca = make_ca(folder, "other-ca", "some-other-ca")
        # Only the IP: a client that dials "localhost" must find the name missing.
        self.server = issue(folder, "server", self.ca, "server", server_ips=["127.0.0.1"])
        self.client = issue(folder, "client", self.ca, "alice", client=True)
        self.foreign_client = issue(folder, "foreign", self.other_ca, "alice", client=True)
        self.expired_client = issue(folder, "expired", self.ca, "alice", client=True, expired=True)
        # Members dial each other with the certificate they serve, so it is both.
        self.peer = issue(folder, "peer", self.ca, "peer", server_ips=["127.0.0.1"], client=True)

    def renew_server(self) -> Issued:
        """A new server certificate (new key, new serial) in place of the old files."""
        self.server = issue(self.folder, "server", self.ca, "server", server_ips=["127.0.0.1"])
        return self.server
