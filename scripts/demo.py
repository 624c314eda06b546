"""make demo: import the sample files of examples/files from a loopback origin.

Starts a static origin on 127.0.0.1, a webhook receiver, and the real
service (``fileimport serve``) with its data under ./var/demo; posts one
batch, shows progress, prints the final status JSON, the webhook it
received and where the files are stored.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "files"
DATA_DIR = ROOT / "var" / "demo"
FILEIMPORT = [sys.executable, "-m", "fileimport"]
received_webhooks: list[dict[str, Any]] = []


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        received_webhooks.append({"headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def start(server: ThreadingHTTPServer) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(env: dict[str, str], *args: str) -> str:
    return subprocess.run(
        [*FILEIMPORT, *args], env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def main() -> int:
    shutil.rmtree(DATA_DIR, ignore_errors=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILEIMPORT_")}
    env.update(
        FILEIMPORT_DATA_DIR=str(DATA_DIR),
        FILEIMPORT_PUBLIC_URL=f"http://127.0.0.1:{port}",
        FILEIMPORT_FETCH_ALLOWED_NETWORKS="127.0.0.0/8,::1/128",
        FILEIMPORT_FETCH_BLOCK_PUBLIC="true",
        FILEIMPORT_LOG_LEVEL="WARNING",
    )
    origin = start(ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(SAMPLES))))
    receiver = start(ThreadingHTTPServer(("127.0.0.1", 0), Receiver))
    print(f"origin:  {origin}  (serving {SAMPLES.relative_to(ROOT)})")

    run(env, "migrate")
    run(env, "project", "create", "demo")
    token = run(
        env,
        "token",
        "create",
        "--project",
        "demo",
        "--scope",
        "public-api:write",
        "--scope",
        "public-api:read",
    )
    service = subprocess.Popen([*FILEIMPORT, "serve", "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        for _ in range(100):
            try:
                if httpx2.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        print(f"service: {base}  (data in {DATA_DIR.relative_to(ROOT)})\n")
        files = [
            {
                "url": f"{origin}/{p.name}",
                "id": f"demo-{p.stem}",
                "fileName": p.stem,
                "metadata": {"source": "demo"},
            }
            for p in sorted(SAMPLES.iterdir())
        ]
        files.append(
            {
                "url": f"{origin}/error-page.html",
                "id": "demo-photo",
                "fileName": "photo",
                "mediaType": "image",
                "metadata": {},
            }
        )
        files.append(
            {"url": f"{origin}/missing.jpg", "id": "demo-missing", "fileName": "missing", "metadata": {}}
        )
        batch = {
            "systemName": "demo",
            "webhook": f"{receiver}/hook",
            "context": {"run": "make demo"},
            "files": files,
        }
        job = httpx2.post(f"{base}/api/v1/import/files", json=batch, headers=headers).json()
        print(f"POST /api/v1/import/files -> {job}")
        while True:
            status = httpx2.get(
                f"{base}/api/v1/import/files/status", params={"id": job["id"]}, headers=headers
            ).json()
            print(f"  progress: {status['progress']}")
            if status["finished"]:
                break
            time.sleep(0.2)
        print("\nGET /api/v1/import/files/status ->")
        print(json.dumps(status, indent=2))
        for _ in range(50):
            if received_webhooks:
                break
            time.sleep(0.1)
        if received_webhooks:
            hook = received_webhooks[0]
            print(f"\nwebhook received, webhook-id {hook['headers'].get('webhook-id')}:")
            print(json.dumps(hook["body"]["overview"], indent=2))
        print("\nstored files:")
        for result in status["files"]:
            if result.get("mediaId"):
                entry = httpx2.get(f"{base}/api/v1/mediaLibrary/{result['mediaId']}", headers=headers).json()
                asset = entry["asset"]
                print(
                    f"  {entry['externalId']:<22} {asset['mimeType']:<14} {asset['size']:>7} B  {asset['url']}"
                )
        print(f"\nblobs on disk under {DATA_DIR.relative_to(ROOT) / 'blobs'} (content-addressed by SHA-256)")
        print(
            "\nThe demo's service stops now: the asset URLs above answer again once the same data is"
            f" served, with `FILEIMPORT_DATA_DIR={DATA_DIR.relative_to(ROOT)} make serve`"
            " (on port 8000, not the demo's port)."
        )
        return 0
    finally:
        service.terminate()
        service.wait(15)


if __name__ == "__main__":
    sys.exit(main())
