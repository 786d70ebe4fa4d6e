"""Make a self-signed certificate authority and TLS certificates for a Dask cluster.

    python cluster/tls/make_certs.py --out cluster/tls/certs [--host 127.0.0.1] [--days 30]

Writes ``ca.pem`` (the authority every party trusts), and ``scheduler``, ``worker`` and
``client`` certificates (``NAME.pem``) with their private keys (``NAME-key.pem``, mode 0600),
each valid for the given host names / IP addresses. The CA's own key is written as
``ca-key.pem`` so more certificates can be signed later; keep it out of the cluster.

Mutual TLS: the scheduler only accepts workers and clients whose certificate the CA signed, so
nobody without a key can submit work. This is an example for tests and small deployments; a site
with its own PKI should issue these certificates from it instead.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PARTIES = ("scheduler", "worker", "client")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apflow"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _alt_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # create with 0600 from the start so the key is never readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def make_certs(out: Path, hosts: list[str], days: int = 30) -> dict[str, Path]:
    """Create the CA and the three certificates in ``out``; return their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("apflow test CA"))
        .issuer_name(_name("apflow test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": out / "ca.pem"}
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca-key.pem", ca_key)

    for party in PARTIES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"apflow {party}"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(valid_from)
            .not_valid_after(valid_to)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_alt_names(hosts), critical=False)
            .add_extension(
                # every Dask party is both a TLS server and a client (workers serve each other)
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        paths[party] = out / f"{party}.pem"
        paths[party].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{party}-key"] = out / f"{party}-key.pem"
        _write_key(paths[f"{party}-key"], key)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "certs")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        help="host name or IP the certificates are valid for (repeatable; default 127.0.0.1 "
        "and localhost)",
    )
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()
    paths = make_certs(args.out, args.hosts or ["127.0.0.1", "localhost"], args.days)
    for name, path in paths.items():
        print(f"{name:14s} {path}")


if __name__ == "__main__":
    main()
