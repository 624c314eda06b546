"""The ``fileimport`` command as scripts use it: projects, configurations, tokens."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx2
import pytest

from tests.support.process import FILEIMPORT, cli, serve_process, service_env
from tests.support.service import free_port

CONFIG = """
mediaTypes:
  - handle: image
    type: mediaImage
    maxFileSize: 15MB
    allowedMimeTypes: [image/jpeg, image/png]
    metadata:
      - {handle: title, type: text, required: true, maxLength: 200}
      - {handle: credit, type: text}
  - {handle: file, type: mediaFile, maxFileSize: 2GiB}
"""


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FILEIMPORT, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_project_with_configuration_and_scoped_expiring_tokens(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var")
    cli(env, "migrate")
    config_file = tmp_path / "newsroom.yaml"
    config_file.write_text(CONFIG)
    cli(env, "project", "create", "newsroom", "--config", str(config_file))

    shown = json.loads(cli(env, "project", "show", "newsroom"))
    assert shown["name"] == "newsroom"
    assert shown["webhookSecret"].startswith("whsec_")
    image = shown["config"]["mediaTypes"][0]
    assert (image["handle"], image["maxFileSize"]) == ("image", 15_000_000)
    assert shown["config"]["mediaTypes"][1]["maxFileSize"] == 2 * 2**30

    writer = cli(env, "token", "create", "--project", "newsroom", "--scope", "public-api:write")
    assert writer.count("\n") == 1
    assert writer.startswith("fi_")
    short = cli(
        env, "token", "create", "--project", "newsroom", "--scope", "public-api:read", "--expires-in", "2s"
    )

    assert run(env, "project", "create", "newsroom").returncode == 1
    assert run(env, "project", "show", "nope").returncode == 1
    assert run(env, "token", "create", "--project", "nope", "--scope", "public-api:read").returncode == 1
    unknown_scope = run(env, "token", "create", "--project", "newsroom", "--scope", "admin")
    assert unknown_scope.returncode == 2
    assert "unknown scope" in unknown_scope.stderr
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("mediaTypes:\n  - {handle: image, type: mediaPainting, maxFileSize: 1MB}\n")
    refused = run(env, "project", "create", "bad", "--config", str(bad_config))
    assert refused.returncode == 2
    assert "mediaPainting" in refused.stderr or "type" in refused.stderr

    with serve_process(env, writer.strip()) as service:
        url = f"{service.base_url}/api/v1/import/files"
        # The project's own metadata fields apply: 'credit' exists, 'caption' does not.
        body = {
            "systemName": "wire",
            "files": [
                {
                    "url": "http://127.0.0.1:9/a.jpg",
                    "id": "a",
                    "fileName": "a",
                    "mediaType": "image",
                    "metadata": {"credit": "AP"},
                },
                {
                    "url": "http://127.0.0.1:9/b.jpg",
                    "id": "b",
                    "fileName": "b",
                    "mediaType": "image",
                    "metadata": {"title": "B", "caption": "x"},
                },
            ],
        }
        response = httpx2.post(url, json=body, headers=service.headers)
        assert response.status_code == 400
        assert set(response.json()["error_details"]) == {"files.0.metadata.title", "files.1.metadata.caption"}

        short = cli(
            env,
            "token",
            "create",
            "--project",
            "newsroom",
            "--scope",
            "public-api:read",
            "--expires-in",
            "3s",
        )
        reader = {"Authorization": f"Bearer {short.strip()}"}
        assert httpx2.get(f"{service.base_url}/api/v1/mediaLibrary?ids=x", headers=reader).status_code == 200
        assert httpx2.post(url, json=body, headers=reader).status_code == 403
        time.sleep(3.1)
        expired = httpx2.get(f"{service.base_url}/api/v1/mediaLibrary?ids=x", headers=reader)
        assert expired.status_code == 401
        assert expired.json()["error_details"]


def test_blank_project_names_and_ports_out_of_range_are_refused(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var")
    cli(env, "migrate")
    for name in ("", "   ", " padded", "tab\there"):
        done = run(env, "project", "create", name)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert "invalid project name" in done.stderr
    assert run(env, "project", "show", "   ").returncode != 0
    cli(env, "project", "create", "p")
    done = run(env, "token", "create", "--project", "p", "--scope", "public-api:read", "--expires-in", "0s")
    assert done.returncode == 2
    assert done.stdout == ""  # no token that is expired already
    for port in ("0", "70000"):
        done = run(env, "serve", "--no-worker", "--port", port)
        assert done.returncode == 2, (port, done.stderr)
        assert "port" in done.stderr.lower()


def test_tokens_are_listed_without_secrets_and_a_revoked_one_answers_401(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var")
    cli(env, "migrate")
    cli(env, "project", "create", "newsroom")
    keeper = cli(env, "token", "create", "--project", "newsroom", "--scope", "public-api:read").strip()
    leaked = cli(
        env, "token", "create", "--project", "newsroom", "--scope", "public-api:read", "--label", "ci"
    ).strip()
    other = cli(env, "token", "create", "--project", "newsroom", "--scope", "public-api:read").strip()

    listed = [json.loads(line) for line in cli(env, "token", "list", "--project", "newsroom").splitlines()]
    assert [t["label"] for t in listed] == ["", "ci", ""]
    assert all(keeper not in json.dumps(t) for t in listed), "a secret was printed"
    assert listed[1]["scopes"] == ["public-api:read"]

    with serve_process(env, keeper) as service:
        library = f"{service.base_url}/api/v1/mediaLibrary?ids=x"

        def status(token: str) -> int:
            return httpx2.get(library, headers={"Authorization": f"Bearer {token}"}).status_code

        assert (status(keeper), status(leaked), status(other)) == (200, 200, 200)
        run(env, "token", "revoke", str(listed[1]["number"]), "--project", "newsroom").check_returncode()
        run(env, "token", "revoke", other, "--project", "newsroom").check_returncode()
        assert (status(keeper), status(leaked), status(other)) == (200, 401, 401)

    again = run(env, "token", "revoke", str(listed[1]["number"]), "--project", "newsroom")
    assert again.returncode == 1
    assert "no such token" in again.stderr
    assert run(env, "token", "revoke", "1", "--project", "nope").returncode == 1
    assert len(cli(env, "token", "list", "--project", "newsroom").splitlines()) == 1


# PostgreSQL on a closed loopback port: refused at once, no server involved.
UNREACHABLE_DATABASE = "postgresql://fileimport:s3cret-pw@127.0.0.1:1/fileimport"


@pytest.mark.parametrize(
    ("database_url", "shown"),
    [
        (UNREACHABLE_DATABASE, "postgresql+psycopg://fileimport:***@127.0.0.1:1/fileimport"),
        (
            "postgresql://fileimport@127.0.0.1:1/fileimport?sslmode=disable&password=s3cret-pw",
            "postgresql+psycopg://fileimport@127.0.0.1:1/fileimport?sslmode=disable&password=***",
        ),
    ],
)
def test_production_serve_exits_when_the_database_is_unreachable(
    tmp_path: Path, database_url: str, shown: str
) -> None:
    """An orchestrator sees a failed start, not a process that is never ready; no password shown."""
    env = service_env(
        tmp_path / "var",
        FILEIMPORT_MODE="production",
        FILEIMPORT_DATABASE_URL=database_url,
        FILEIMPORT_STORAGE_URL=(tmp_path / "blobs").as_uri(),
    )
    done = subprocess.run(
        [*FILEIMPORT, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot use the database at {shown}: " in lines[0]
    assert "s3cret-pw" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    "command",
    [("migrate",), ("token", "list", "--project", "default"), ("project", "show", "default")],
)
def test_commands_say_in_one_line_that_the_database_is_unreachable(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """No traceback, no password, and no advice to migrate a database that does not answer."""
    env = service_env(tmp_path / "var", FILEIMPORT_DATABASE_URL=UNREACHABLE_DATABASE)
    done = run(env, *command)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "cannot use the database at postgresql+psycopg://fileimport:***@127.0.0.1:1/fileimport: "
    )
    assert "Traceback" not in done.stderr
    assert "migrate" not in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("FILEIMPORT_STORAGE_OPTIONS", '{"fsync": "maybe"}', "storage option 'fsync' must be true or false"),
        ("FILEIMPORT_STORAGE_OPTIONS", '{"nope": "1"}', "unknown options for file storage: ['nope']"),
        ("FILEIMPORT_STORAGE_URL", "s3://", "S3 storage URL needs a bucket"),
    ],
)
@pytest.mark.parametrize("command", [("serve", "--port", "9"), ("worker",), ("gc",)])
def test_bad_storage_settings_stop_the_command_in_one_line(
    tmp_path: Path, command: tuple[str, ...], variable: str, value: str, said: str
) -> None:
    env = service_env(tmp_path / "var", **{variable: value})
    done = run(env, *command)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"invalid storage settings: {said}"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        (
            {"FILEIMPORT_STORAGE_OPTIONS": "not json"},
            "FILEIMPORT_STORAGE_OPTIONS: must be a JSON object of option names to values",
        ),
        (
            {"FILEIMPORT_WORKER_CONCURRENCY": "abc", "FILEIMPORT_FETCH_ALLOWED_NETWORKS": "notacidr"},
            "FILEIMPORT_WORKER_CONCURRENCY: Input should be a valid integer, unable to parse string as an "
            "integer; FILEIMPORT_FETCH_ALLOWED_NETWORKS: 'notacidr' does not appear to be an IPv4 or IPv6 network",
        ),
        # serve took it and failed with a KeyError traceback
        ({"FILEIMPORT_LOG_LEVEL": "LOUD"}, "FILEIMPORT_LOG_LEVEL: Input should be 'DEBUG', 'INFO'"),
        (
            {"FILEIMPORT_PUBLIC_URL": "notaurl"},
            "FILEIMPORT_PUBLIC_URL: must be an absolute http",
        ),
    ],
)
def test_bad_settings_are_named_by_their_variable_in_one_line(
    tmp_path: Path, variables: dict[str, str], said: str
) -> None:
    done = run(service_env(tmp_path / "var", **variables), "worker")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[0].startswith(f"invalid settings: {said}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "errors.pydantic.dev" not in done.stderr


def test_a_configuration_that_could_not_work_is_refused_naming_each_problem(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var")
    cli(env, "migrate")
    config = tmp_path / "bad.yaml"
    config.write_text(
        "mediaTypes:\n"
        "  - handle: image\n"
        "    type: mediaImage\n"
        "    maxFileSize: 0\n"
        "    allowedMimeTypes: [not a mime]\n"
        "    metadata: [{handle: title}, {handle: title, type: number}]\n"
        "  - {handle: file, type: mediaFile, maxFileSize: 15XB}\n"
    )
    done = run(env, "project", "create", "bad", "--config", str(config))
    assert done.returncode == 2, done.stderr
    said = done.stderr.strip()
    assert said.startswith(f"invalid configuration in {config}: "), said
    for problem in (
        "mediaTypes.0.maxFileSize: must be at least 1 byte",
        "mediaTypes.0.allowedMimeTypes: 'not a mime' is not a MIME type or pattern",
        "mediaTypes.0.metadata: field 'title' is declared twice",
        "mediaTypes.1.maxFileSize: could not interpret byte unit: XB",
    ):
        assert problem in said, said
    assert "at least 1 item" not in said  # pydantic's follow-on error about the list
    assert "errors.pydantic.dev" not in said
    assert run(env, "project", "show", "bad").returncode == 1

    # Accepted before (fresh-user trial): handles a request could not name plainly, a size no
    # store takes, a maxLength that a date field ignores, and a duplicate handle unnamed.
    config.write_text(
        "mediaTypes:\n"
        "  - handle: my image\n"
        "    type: mediaImage\n"
        "    maxFileSize: 99999999999999999999999999\n"
        "    metadata: [{handle: x y}, {handle: when, type: date, maxLength: 10}]\n"
        '  - {handle: "file\\u202e", type: mediaFile, maxFileSize: 1MB}\n'
    )
    said = run(env, "project", "create", "bad", "--config", str(config)).stderr.strip()
    for problem in (
        "mediaTypes.0.handle: 'my image' is no handle",
        "mediaTypes.0.maxFileSize: must be at most 5 TiB",
        "mediaTypes.0.metadata.0.handle: 'x y' is no handle",
        "mediaTypes.0.metadata.1.maxLength: applies to text and list fields only, not to a date field",
        "mediaTypes.1.handle: 'file\\u202e' is no handle",
    ):
        assert problem in said, said
    config.write_text(
        "mediaTypes:\n"
        "  - {handle: doc, type: mediaFile, maxFileSize: 1MB}\n"
        "  - {handle: doc, type: mediaFile, maxFileSize: 2MB}\n"
    )
    done = run(env, "project", "create", "bad", "--config", str(config))
    assert done.returncode == 2
    assert "mediaTypes: media type 'doc' is declared twice" in done.stderr, done.stderr


@pytest.mark.parametrize(
    "command", [("project", "show", "default"), ("token", "list", "--project", "default"), ("gc",)]
)
def test_a_command_on_a_database_never_migrated_says_to_migrate(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    env = service_env(tmp_path / "var")
    for setup in ("no data folder yet", "a data folder without a database"):
        done = run(env, *command)
        assert done.returncode == 1, (setup, done.stderr)
        assert "Run 'fileimport migrate' first" in done.stderr, setup
        # Before: aiosqlite's thread printed "Event loop is closed" tracebacks, and gc made an
        # empty database and reported "deleted 0 unreferenced blob(s)".
        assert "Traceback" not in done.stderr, setup
        assert not (tmp_path / "var" / "fileimport.sqlite3").exists(), setup
        (tmp_path / "var").mkdir(exist_ok=True)
    (tmp_path / "var" / "fileimport.sqlite3").touch()
    done = run(env, *command)  # an empty SQLite file, no tables
    assert done.returncode == 1
    assert "no such table" in done.stderr
    assert "Run 'fileimport migrate' first" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_data_folder_that_cannot_be_made_is_said_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    done = run(service_env(tmp_path / "a-file" / "var"), "migrate")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"cannot create FILEIMPORT_DATA_DIR {tmp_path / 'a-file' / 'var'}: "), (
        done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"\xff\xfe", "cannot read"),  # not UTF-8: a UnicodeDecodeError traceback before
        (b"[]", "invalid configuration"),  # before: a project with the default media types
    ],
)
def test_a_configuration_file_that_is_no_configuration_is_refused(
    tmp_path: Path, content: bytes, said: str
) -> None:
    env = service_env(tmp_path / "var")
    cli(env, "migrate")
    config = tmp_path / "config.yaml"
    config.write_bytes(content)
    done = run(env, "project", "create", "p", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"{said} in {config}" if said.startswith("invalid") else f"{said} {config}")
    assert "Traceback" not in done.stderr
    assert run(env, "project", "show", "p").returncode == 1


def test_development_serve_starts_and_is_not_ready_when_the_database_is_unreachable(tmp_path: Path) -> None:
    env = service_env(tmp_path / "var", FILEIMPORT_DATABASE_URL=UNREACHABLE_DATABASE)
    with serve_process(env, token="", args=["--no-worker"]) as service:
        ready = httpx2.get(f"{service.base_url}/readyz", timeout=10)
    assert ready.status_code == 503
    assert set(ready.json()["error_details"]) == {"database"}
