"""A client that hangs up in the middle of its POST body is not an error of the service."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2

from tests.support.process import prepare, serve_process, service_env


def test_a_post_cut_off_mid_body_logs_no_error_and_the_service_goes_on(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var", FILEIMPORT_LOG_LEVEL="INFO", FILEIMPORT_LOG_JSON="true")
    token = prepare(env)
    log_path = tmp_path / "serve.log"
    with serve_process(env, token, args=["--no-worker"], log_path=log_path) as service:
        port = urlsplit(service.base_url).port
        assert port is not None
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
            f"{service.base_url}/api/v1/import/files",
            json={"systemName": "s", "files": []},
            headers=service.headers,
        )
        assert response.status_code == 400
    text = log_path.read_text()
    assert "Traceback" not in text
    assert '"level": "error"' not in text
    assert text.count("http.client_disconnected") == 3
