"""Certificates and keys for a TLS + SuperNode-authentication deployment, without openssl or
ssh-keygen (``cryptography`` comes with Flower).

    python -m coordinator.pki OUT [--silo NAME ...] [--san DNS:host,IP:10.0.0.5]

writes, with every private key readable by its owner only (0600):

    OUT/ca/ca.key, ca.crt              the CA (its key belongs to no service)
    OUT/superlink/ca.crt, server.pem, server.key
                                       the SuperLink's (and the Fleet gateway's) certificate
    OUT/supernode-<silo>/ca.crt, supernode, supernode.pub
                                       one SSH-format ECDSA P-384 key pair per SuperNode
    OUT/public/ca.crt, <silo>.pub      what the coordinator needs to register the SuperNodes

An existing CA is kept (re-running adds missing silos); ``--uid`` hands the files to the user
the services run as.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_SANS = ("DNS:superlink", "DNS:fleet-gateway", "DNS:localhost", "IP:127.0.0.1")


def _write(path: Path, data: bytes, private: bool, uid: int | None) -> None:
    """Whatever the umask: a file is never readable by others while written, a private key
    stays 0600, and a folder that holds keys (all but ``public``) is its owner's only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755 if path.parent.name == "public" else 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600 if private else 0o644)
    if uid is not None:
        os.chown(path, uid, uid)
        os.chown(path.parent, uid, uid)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _sans(specs: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for spec in specs:
        kind, _, value = spec.partition(":")
        if kind == "DNS":
            names.append(x509.DNSName(value))
        elif kind == "IP":
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
        else:
            raise SystemExit(f"error: subject alternative name {spec!r}: use DNS:name or IP:address")
    return x509.SubjectAlternativeName(names)


def make_pki(out: Path, silos: list[str], sans: list[str], days: int = 365,
             uid: int | None = None) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o755)
    ca_key_path, ca_crt_path = out / "ca" / "ca.key", out / "ca" / "ca.crt"
    if ca_key_path.is_file():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca_crt = x509.load_pem_x509_certificate(ca_crt_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_crt = (x509.CertificateBuilder().subject_name(_name("MergeRec federation CA"))
                  .issuer_name(_name("MergeRec federation CA")).public_key(ca_key.public_key())
                  .serial_number(x509.random_serial_number()).not_valid_before(now)
                  .not_valid_after(now + datetime.timedelta(days=days))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .sign(ca_key, hashes.SHA256()))
        _write(ca_key_path, _pem_key(ca_key), True, None)  # the CA key stays with its owner
        _write(ca_crt_path, ca_crt.public_bytes(serialization.Encoding.PEM), False, None)
    ca_pem = ca_crt.public_bytes(serialization.Encoding.PEM)
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder().subject_name(_name("superlink")).issuer_name(ca_crt.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(_sans(sans), critical=False)
              .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    _write(out / "superlink" / "ca.crt", ca_pem, False, uid)
    _write(out / "superlink" / "server.pem", server.public_bytes(serialization.Encoding.PEM), False, uid)
    _write(out / "superlink" / "server.key", _pem_key(server_key), True, uid)
    _write(out / "public" / "ca.crt", ca_pem, False, uid)
    for silo in silos:
        folder = out / f"supernode-{silo}"
        if (folder / "supernode").is_file():
            continue
        key = ec.generate_private_key(ec.SECP384R1())
        _write(folder / "supernode", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()), True, uid)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH) + f" {silo}\n".encode()
        _write(folder / "supernode.pub", public, False, uid)
        _write(folder / "ca.crt", ca_pem, False, uid)
        _write(out / "public" / f"{silo}.pub", public, False, uid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coordinator.pki", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--silo", action="append", default=[])
    parser.add_argument("--san", action="append", default=[],
                        help="extra subject alternative names, e.g. DNS:coordinator.example.org")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--uid", type=int, help="owner of the files the services read")
    args = parser.parse_args(argv)
    sans = list(DEFAULT_SANS) + [s for item in args.san for s in item.split(",") if s]
    make_pki(Path(args.out), args.silo, sans, args.days, args.uid)
    print(f"PKI in {args.out}: CA, SuperLink certificate ({', '.join(sans)}), "
          f"SuperNode keys: {', '.join(args.silo) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
