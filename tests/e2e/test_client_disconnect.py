"""A client that hangs up in the middle of its POST body is not an error of the service."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx2

from tests.support.process import FILEIMPORT, prepare, service_env
from tests.support.service import free_port


def test_a_post_cut_off_mid_body_logs_no_error_and_the_service_goes_on(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var", FILEIMPORT_LOG_LEVEL="INFO", FILEIMPORT_LOG_JSON="true")
    token = prepare(env)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*FILEIMPORT, "serve", "--no-worker", "--port", str(port)], env=env, stderr=log
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx2.HTTPError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port)) as conn:
                    conn.sendall(
                        b"POST /api/v1/import/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        b"Authorization: Bearer " + token.encode() + b"\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                        b'{"systemName": "s", "files": ['
                    )
                    time.sleep(0.2)
            time.sleep(0.5)
            # The service still answers.
            response = httpx2.post(
                f"http://127.0.0.1:{port}/api/v1/import/files",
                json={"systemName": "s", "files": []},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 400
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(20)
    text = log_path.read_text()
    assert "Traceback" not in text
    assert '"level": "error"' not in text
    assert text.count("http.client_disconnected") == 3
