"""TLS for the NATS cluster: a certificate authority of the cluster's own and one certificate its nodes
serve, for their client connections and their routes to each other.

Between hosts the cluster's traffic (taps, acks, the relays' and the backend's logins) crosses the
station network, which is hostile ground (docs/security.md): TLS keeps it from being read or altered on
the way, and a client that checks the nodes' certificate against the cluster's CA cannot be pointed at
an impostor node. Here every node is on loopback, so one certificate (for 127.0.0.1 and localhost) serves
all three; a deployment issues one a host from its own CA the same way. Keys are ECDSA P-256 (what both
nats-server and Python's ssl take everywhere), written mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backend.deploy.private import write_private

VALID_FOR = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ClusterCertificates:
    """The files a TLS cluster needs, in one directory: the CA's certificate (what clients trust) and the
    nodes' certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def make(cls, directory: Path,
             hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ClusterCertificates:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faregate cluster CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                           content_commitment=False, key_encipherment=False,
                                           data_encipherment=False, key_agreement=False,
                                           encipher_only=False, decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        node_key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        node = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "faregate nats node")]))
                .issuer_name(ca_name).public_key(node_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALID_FOR)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(node_key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                # routes: each node is the client of the others, so the one certificate serves both ways
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        made = cls(directory / "ca.pem", directory / "node.pem", directory / "node-key.pem")
        made.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        made.cert_file.write_bytes(node.public_bytes(serialization.Encoding.PEM))
        key = node_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        write_private(made.key_file, key)
        return made

    def block(self, *, verify: bool = False) -> str:
        """The nats-server `tls { }` block (`verify`: ask the peer for a certificate from the CA too, as
        the routes do)."""
        lines = [f"cert_file: {_quoted(self.cert_file)}", f"key_file: {_quoted(self.key_file)}",
                 f"ca_file: {_quoted(self.ca_file)}", "timeout: 5"]
        if verify:
            lines.append("verify: true")
        return "tls {\n    " + "\n    ".join(lines) + "\n  }"


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'
