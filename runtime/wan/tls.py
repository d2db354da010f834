"""Mutual TLS between gateways: credentials from PEM files, and a development CA.

Each center has a certificate whose common name and DNS name are the center's name, signed
by the job's CA. A gateway accepts a call only over mTLS with a certificate from that CA,
and only if the certificate's name is the center the call claims to come from; it dials a
peer expecting that peer's name in the peer's certificate.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import pathlib

import grpc


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """PEM bytes of the CA certificate and one center's certificate and key."""

    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, ca: str | pathlib.Path, cert: str | pathlib.Path, key: str | pathlib.Path) -> "TlsFiles":
        """Read the three PEM files.

        Raises:
            ValueError: a file is missing or is not PEM, naming the file.
        """
        out = []
        for what, p in (("ca", ca), ("cert", cert), ("key", key)):
            try:
                data = pathlib.Path(p).read_bytes()
            except OSError as err:
                raise ValueError(f"wan.tls.{what}: cannot read {p}: {err.strerror}") from None
            if b"-----BEGIN" not in data:
                raise ValueError(f"wan.tls.{what}: {p} is not a PEM file")
            out.append(data)
        return cls(*out)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def make_dev_ca(out_dir: str | pathlib.Path, centers: list[str], days: int = 30) -> dict[str, pathlib.Path]:
    """Write a development CA and a certificate + key per center into ``out_dir``.

    Files: ``ca.pem``, ``ca.key``, ``<center>.pem``, ``<center>.key``. Certificates name the
    center (CN and DNS SAN) and also carry ``localhost`` / ``127.0.0.1`` so the embedded
    demo can use them. For development only: production centers use their own PKI.

    Returns:
        name -> path of every file written.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    written: dict[str, pathlib.Path] = {}

    def write_key(name: str, key) -> None:
        p = out / f"{name}.key"
        p.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        p.chmod(0o600)
        written[f"{name}.key"] = p

    def write_cert(name: str, cert) -> None:
        p = out / f"{name}.pem"
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written[f"{name}.pem"] = p

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "suanwang development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_key("ca", ca_key)
    write_cert("ca", ca_cert)
    for center in centers:
        key = ec.generate_private_key(ec.SECP256R1())
        san = x509.SubjectAlternativeName(
            [
                x509.DNSName(center),
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, center)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(san, critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        write_key(center, key)
        write_cert(center, cert)
    return written


def peer_names(context: grpc.aio.ServicerContext, common_name_only: bool = False) -> set[str]:
    """Names (CN, and SANs unless ``common_name_only``) of the client certificate of a
    call; empty without mTLS."""
    auth = context.auth_context() or {}
    names: set[str] = set()
    keys = ("x509_common_name",) if common_name_only else ("x509_common_name", "x509_subject_alternative_name")
    for key in keys:
        for v in auth.get(key, ()):
            names.add(v.decode() if isinstance(v, bytes) else str(v))
    return names
