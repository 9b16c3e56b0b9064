"""Certificates for TLS tests: a private CA made per test, and leaf certificates it signs (trustme), as
PEM files the devserver (``--tls-cert/--tls-key``) and the sender (``--ca-bundle``) read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA certificate: what a client trusts (``--ca-bundle``)
    cert: Path  # the server's certificate chain
    key: Path  # the server's private key

    @property
    def server(self) -> tuple[Path, Path]:
        """(certificate, key): what ``DevServer.start(tls=...)`` takes."""
        return self.cert, self.key


def make_certs(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certs:
    """A new CA and a server certificate for ``hosts``, written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*hosts)
    certs = Certs(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(certs.ca))
    leaf.private_key_pem.write_to_path(str(certs.key))
    with open(certs.cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    return certs
