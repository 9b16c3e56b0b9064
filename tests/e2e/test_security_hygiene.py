"""Spool security and hygiene: TLS verified by default (a private CA by option), network file systems
refused, debris in tmp/ swept, and `status --watch` refreshing in place."""

from __future__ import annotations

import http.server
import os
import pty
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rudder_fast import Emitter
from rudder_fast.layout import NETWORK_FILESYSTEMS, mount_type
from tests.support.devserver import DevServer
from tests.support.processes import console_script
from tests.support.producers import fill_spool
from tests.support.sender import Senders, sender_env
from tests.support.waiting import wait_for

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /var/spool rw,relatime shared:2 - nfs4 server:/export rw,vers=4.2
31 30 0:41 / /var/spool/local rw,relatime shared:3 - tmpfs tmpfs rw
32 22 0:42 / /mnt/with\\040space rw - cifs //srv/share rw
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/app/spool", "ext4"),
        ("/var/spool/rudder-fast", "nfs4"),
        ("/var/spool/local/rudder-fast", "tmpfs"),
        ("/var/spoolish", "ext4"),
        ("/mnt/with space/spool", "cifs"),
    ],
)
def test_the_deepest_mount_decides_the_file_system(path: str, expected: str) -> None:
    assert mount_type(MOUNTINFO, path) == expected


def test_network_file_systems_are_known() -> None:
    assert {"nfs", "nfs4", "cifs", "fuse.sshfs"} <= NETWORK_FILESYSTEMS
    assert not {"ext4", "xfs", "btrfs", "tmpfs", "overlay"} & NETWORK_FILESYSTEMS


# -- TLS ----------------------------------------------------------------------------------------------


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.bodies += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Path, http.server.ThreadingHTTPServer]]:
    """A loopback HTTPS endpoint answering 200 with a certificate from a private, self-made CA."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    httpd.bodies = 0  # type: ignore[attr-defined]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", cert, httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_tls_is_verified_by_default_and_a_private_ca_can_be_given(
    tmp_path: Path, tls_server: tuple[str, Path, http.server.ThreadingHTTPServer], senders: Senders
) -> None:
    url, cert, httpd = tls_server
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 20)
    refused = senders.run(["--drain", "--drain-timeout", "3"], sender_env(spool, url))
    assert refused.returncode == 4
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr or "certificate verify failed" in refused.stderr
    assert httpd.bodies == 0  # type: ignore[attr-defined]
    trusted = senders.run(["--drain", "--ca-bundle", str(cert)], sender_env(spool, url))
    assert trusted.returncode == 0, trusted.stderr
    assert httpd.bodies >= 1  # type: ignore[attr-defined]


# -- hygiene ------------------------------------------------------------------------------------------


def test_debris_in_tmp_is_swept_but_a_segment_being_created_is_not(
    tmp_path: Path, devserver: DevServer, senders: Senders
) -> None:
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 5)
    old = spool / "tmp" / "0123456789abcdef-999999-0.seg"
    old.write_bytes(b"half a header")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    young = spool / "tmp" / "fedcba9876543210-999998-0.seg"
    young.write_bytes(b"being created right now")
    result = senders.run(["--drain"], sender_env(spool, devserver.url))
    assert result.returncode == 0, result.stderr
    assert not old.exists()
    assert young.exists()


def test_idle_producers_create_no_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    em = Emitter(spool, segment_max_age_s=0.2)
    em.track(user_id="u", event="e")
    time.sleep(0.5)  # well past the segment's age: rotation happens on a call, never on a timer
    assert len(list((spool / "segments").glob("*.seg"))) == 1
    em.track(user_id="u", event="e")  # the next call rotates: a sealed file and a new one
    assert len(list((spool / "segments").glob("*.seg"))) == 2


def test_status_watch_refreshes_in_place(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    Emitter(spool).track(user_id="u", event="e")
    # On a terminal (a pseudo-terminal here) the screen is cleared and redrawn; into a pipe the reports
    # are plain (tests/e2e/test_cli.py).
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [console_script("rudder-fast"), "status", "--watch", "--interval", "0.1", "--spool-dir", str(spool)],
        stdout=terminal,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while seen.count(b"\x1b[H\x1b[2J") < 2 and time.monotonic() < deadline:
            seen += os.read(controller, 4096)
    finally:
        proc.terminate()
        proc.wait(10)
        os.close(controller)
    assert seen.count(b"\x1b[H\x1b[2J") >= 2, seen
    assert b"1 events" in seen


def test_status_on_a_missing_spool_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [console_script("rudder-fast"), "status", "--spool-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "no spool" in result.stderr


def test_write_key_never_reaches_the_spool(tmp_path: Path, devserver: DevServer, senders: Senders) -> None:
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 50)
    key = "very-secret-write-key-7f3a"
    running = senders.start(["--metrics-port", "0"], sender_env(spool, devserver.url, write_key=key))
    wait_for(lambda: len(devserver.received()) == 50, timeout=60)
    running.proc.terminate()
    assert running.wait(15) == 0
    for path in spool.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    assert key not in running.stderr()


def test_the_write_key_can_come_from_a_file_instead_of_the_command_line(
    tmp_path: Path, start_devserver: Callable[..., DevServer], senders: Senders
) -> None:
    """``--write-key`` is readable by every user in ``ps``: the help says so, and ``--write-key-file``
    (or ``RUDDER_WRITE_KEY_FILE``) keeps the key out of the process list."""
    help_text = subprocess.run(
        [console_script("rudder-fast-sender"), "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    assert "ps" in help_text
    assert "--write-key-file" in help_text
    server = start_devserver(write_keys=["file-key"])
    spool = tmp_path / "spool"
    fill_spool(spool, 1, 20)
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    key_file.chmod(0o600)
    env = sender_env(spool, server.url, write_key=None, RUDDER_WRITE_KEY_FILE=str(key_file))
    proc = senders.run(["--drain", "--drain-timeout", "30"], env)
    assert proc.returncode == 0, proc.stderr
    assert len(server.received()) == 20
    key_file.chmod(0o666)
    proc = senders.run(
        ["--drain", "--write-key-file", str(key_file)], sender_env(spool, server.url, write_key=None)
    )
    assert proc.returncode == 2, proc.stderr
    assert "writable by others" in proc.stderr, proc.stderr
