"""Make the Dask cluster's TLS material: a private CA and one certificate per role; run once before `compose up`.

    python deploy/dask/make_certs.py DIRECTORY     (docker-compose.yml expects ./secrets/dask)

Writes ca.pem and {scheduler,worker,client}.pem + .key.pem (keys 0600). The scheduler, the workers and
the clients (the Prefect worker) present a certificate signed by this CA and accept only peers that do:
a process on the network without one cannot submit pickled functions. The CA's own key is not written:
to add a role, run the script again and redeploy every certificate. Existing files are never replaced.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLES = {"scheduler": ["dask-scheduler", "localhost"], "worker": ["dask-worker", "localhost"], "client": ["client"]}
VALID_DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, private: bool = False) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def make_certs(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    existing = [p.name for p in directory.glob("*.pem")]
    if existing:
        raise SystemExit(f"error: {directory} already holds {sorted(existing)}: remove them to make new ones")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("seqops-dask-ca")).issuer_name(_name("seqops-dask-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    _write(directory / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    for role, names in ROLES.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        _write(directory / f"{role}.pem", cert.public_bytes(serialization.Encoding.PEM))
        _write(directory / f"{role}.key.pem", key.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()), private=True)
        print(f"{directory / role}.pem")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: make_certs.py DIRECTORY")
    make_certs(Path(sys.argv[1]))
