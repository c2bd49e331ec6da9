"""The status page's HTTP side against a real daemon (``stylebox serve`` in a subprocess,
uvicorn in it on a free port): JSON API, files of known jobs only, metrics, events, the
token-guarded actions, reload and SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import photo
from daemon_helpers import Daemon, gated_env, wait_until, write_config

from stylebox.config import HttpConfig, parse_config
from stylebox.errors import ConfigError

TOKEN = "s3cret-token-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_text(port: int, token: str | None = TOKEN) -> str:
    http = f'[http]\nlisten = "127.0.0.1:{port}"\n' + (f'token = "{token}"\n' if token else "")
    return f"""state_dir = "state"
[daemon]
rescan_seconds = 2
drain_seconds = 10
{http}
[[inbox]]
name = "poster"
path = "in-poster"
outbox = "out-poster"
plugin = "posterize"
settle_seconds = 0.2
params = {{ bits = 2 }}

[[inbox]]
name = "gate"
path = "in-gate"
outbox = "out-gate"
plugin = "gated"
settle_seconds = 0.2
max_attempts = 1
params = {{ tag = "a" }}
"""


class Client:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        # http.client sends the path exactly as given: no client-side clean-up of "..".
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def json(self, path: str, method: str = "GET", **headers: str) -> tuple[int, Any]:
        status, _, body = self.request(path, method, headers)
        return status, json.loads(body)

    def status(self) -> dict[str, Any]:
        return self.json("/api/status")[1]


@pytest.fixture
def daemon(tmp_path: Path):
    env, _, gate = gated_env(tmp_path)
    port = free_port()
    config = write_config(tmp_path, config_text(port))
    process = Daemon(config, env)
    process.wait_ready()
    process.client = Client(port)  # type: ignore[attr-defined]
    process.gate = gate  # type: ignore[attr-defined]
    yield process
    if process.process.poll() is None:
        gate.touch()
        process.stop()


def drop(folder: Path, name: str, seed: int) -> None:
    staged = folder.parent / f".staged-{name}"
    photo(24, 16, seed=seed).save(staged, "PNG")
    os.rename(staged, folder / name)


def source(client: Client, key: str) -> dict[str, Any]:
    return client.status()["sources"][key]


def test_http_config_is_off_by_default_and_loopback_unless_an_address_is_named() -> None:
    assert parse_config({}).config.http.listen is None
    assert HttpConfig(listen="8765").listen == "127.0.0.1:8765"
    assert HttpConfig(listen="0.0.0.0:8765").listen == "0.0.0.0:8765"
    with pytest.raises(ConfigError, match=r"http.listen: .*'x:80:y' is not host:port"):
        parse_config({"http": {"listen": "x:80:y"}})
    with pytest.raises(ConfigError, match=r"http.token: .*at least 16"):
        parse_config({"http": {"listen": "1", "token": "short"}})


def test_api_files_and_metrics_of_a_done_job(daemon: Daemon, tmp_path: Path) -> None:
    client: Client = daemon.client  # type: ignore[attr-defined]
    drop(tmp_path / "in-poster", "photo.png", seed=1)
    assert wait_until(lambda: source(client, "inbox:poster")["done"] == 1, 30), daemon.output()

    entry = source(client, "inbox:poster")
    assert (entry["queued"], entry["running"], entry["failed"]) == (0, 0, 0)
    [result] = entry["results"]
    job = result["job"]
    assert result["file"] == "photo.png"
    assert result["result"] == f"/files/{job}/result" and result["input"] == f"/files/{job}/input"
    status, detail = client.json(f"/api/jobs/{job}")
    assert status == 200
    assert detail["state"] == "done" and detail["source"] == "inbox:poster"
    assert detail["plugin"] == "posterize"
    assert client.json("/api/jobs/999")[0] == 404

    status, headers, body = client.request(f"/files/{job}/result")
    assert status == 200 and body == (tmp_path / "out-poster" / "photo.png").read_bytes()
    assert "default-src 'self'" in headers["content-security-policy"]
    status, _, body = client.request(f"/files/{job}/manifest")
    assert json.loads(body)["output"]["result"] == "photo.png"
    status, headers, body = client.request(f"/files/{job}/input")  # from processed/
    assert status == 200 and headers["content-type"] == "image/png" and body[:4] == b"\x89PNG"
    # Other bytes where the journal points (a photo replaced while its job ran stays in the
    # inbox, where its input_path still is): not shown as this job's photo.
    photo(24, 16, seed=9).save(tmp_path / "in-poster" / "processed" / "photo.png")
    assert client.request(f"/files/{job}/input")[0] == 404
    assert client.request(f"/files/{job}/animation")[0] == 404  # posterize makes none

    status, headers, body = client.request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert 'stylebox_jobs{source="inbox:poster",state="done"} 1.0' in text
    assert 'stylebox_queue_depth{source="inbox:poster"} 0.0' in text
    assert 'stylebox_job_seconds_bucket{le="+Inf",plugin="posterize"} 1.0' in text
    assert 'stylebox_job_seconds_count{plugin="posterize"} 1.0' in text
    assert "# TYPE stylebox_steps_per_second gauge" in text
    assert "# TYPE stylebox_failed_jobs gauge" in text

    # The page and its assets come from the package: no other host is named anywhere.
    for path in ("/", "/static/app.js", "/static/style.css"):
        status, _, body = client.request(path)
        assert status == 200, path
        assert not re.search(rb"(src|href)=\"(https?:)?//", body), path
        assert b"http://" not in body and b"https://" not in body, path

    # A clean stop, the page's reading threads' connections still open, leaves every job in
    # the journal's own file: none only in its write-ahead log.
    assert daemon.stop() == 0
    journal = tmp_path / "state" / "journal.sqlite3"
    wal = journal.with_name(journal.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0, wal.stat().st_size
    with closing(sqlite3.connect(f"{journal.as_uri()}?immutable=1", uri=True)) as db:
        assert db.execute("SELECT state FROM jobs").fetchall() == [("done",)]


def test_the_files_of_a_job_in_an_outbox_sub_folder_are_served(tmp_path: Path) -> None:
    # A recursive batch mirrors its folders in the outbox; a daemon on its state shows it.
    env, _, gate = gated_env(tmp_path)
    port = free_port()
    shelf = '[[batch]]\nname = "shelf"\nsource = "library"\noutbox = "out-shelf"\n'
    config = write_config(tmp_path, config_text(port) + shelf + 'plugin = "posterize"\n')
    (tmp_path / "library" / "2026").mkdir(parents=True)
    photo(24, 16, seed=3).save(tmp_path / "library" / "2026" / "a.png")
    daemon = Daemon(config, {**os.environ, **env})
    daemon.wait_ready()
    try:
        command = [sys.executable, "-m", "stylebox.cli", "batch", "shelf", "--config", str(config)]
        ran = subprocess.run(command, env={**os.environ, **env}, capture_output=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        client = Client(port)
        [result] = source(client, "batch:shelf")["results"]
        outputs = tmp_path / "out-shelf" / "2026"
        status, _, body = client.request(result["result"])
        assert status == 200 and body == (outputs / "a.png").read_bytes()
        status, _, body = client.request(f"/files/{result['job']}/manifest")
        assert status == 200 and body == (outputs / "a.json").read_bytes()
    finally:
        gate.touch()
        daemon.stop()


def test_no_path_from_a_url_reaches_the_file_system(daemon: Daemon, tmp_path: Path) -> None:
    client: Client = daemon.client  # type: ignore[attr-defined]
    outbox = tmp_path / "out-poster"
    drop(tmp_path / "in-poster", "photo.png", seed=2)
    assert wait_until(lambda: source(client, "inbox:poster")["done"] == 1, 30), daemon.output()
    job = source(client, "inbox:poster")["results"][0]["job"]
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG not yours")

    traversals = [
        f"/files/{job}/../../../../etc/passwd",
        f"/files/{job}/%2e%2e/%2e%2e/stylebox.toml",
        f"/files/{job}/..%2f..%2fstylebox.toml",
        f"/files/{job}/steps/../../../secret.png",
        f"/files/{job}/{secret}",
        f"/files/{job}//etc/passwd",
        f"/files/{job}/photo.png",  # a file name is not a kind
        "/files/../stylebox.toml",
        "//etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/state.py",
        "/static/..%2fstate.py",
        f"/files/{job}/result/..",
        "/files/-1/result",
        "/files/999/result",
    ]
    for path in traversals:
        status, _, body = client.request(path)
        assert status == 404, (path, status)
        assert b"not yours" not in body and b"root:" not in body

    # Links out of the outbox: the result itself, and a snapshot folder.
    steps = outbox / "photo.steps"
    steps.mkdir()
    (steps / "0003.png").write_bytes(b"\x89PNG fine")
    os.symlink(secret, steps / "0004.png")
    assert client.request(f"/files/{job}/steps/3.png")[0] == 200  # the control
    assert client.request(f"/files/{job}/steps/4.png")[0] == 404
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "0005.png").write_bytes(b"\x89PNG not yours")
    for item in steps.iterdir():
        item.unlink()
    steps.rmdir()
    os.symlink(elsewhere, steps)
    assert client.request(f"/files/{job}/steps/5.png")[0] == 404
    result = outbox / "photo.png"
    result.unlink()
    os.symlink(secret, result)
    assert client.request(f"/files/{job}/result")[0] == 404


def test_actions_need_the_token_cancel_fails_a_running_job_and_retry_queues_it_again(
    daemon: Daemon, tmp_path: Path
) -> None:
    client: Client = daemon.client  # type: ignore[attr-defined]
    drop(tmp_path / "in-gate", "held.png", seed=3)
    assert wait_until(lambda: source(client, "inbox:gate")["running"] == 1, 30), daemon.output()
    job = source(client, "inbox:gate")["running_jobs"][0]["job"]

    assert client.json(f"/api/jobs/{job}/cancel", "POST")[0] == 403
    status, body = client.json(f"/api/jobs/{job}/cancel", "POST", **{"X-Stylebox-Token": "no"})
    assert status == 403 and "X-Stylebox-Token" in body["error"]
    assert client.request(f"/api/jobs/{job}/cancel")[0] == 405  # a GET changes nothing
    assert source(client, "inbox:gate")["running"] == 1

    token = {"X-Stylebox-Token": TOKEN}
    # A job queued behind it (one worker) is failed at once, without running.
    drop(tmp_path / "in-gate", "waiting.png", seed=4)
    assert wait_until(lambda: source(client, "inbox:gate")["queued"] == 1, 30), daemon.output()
    waiting = max(int(row.id) for row in _journal_rows(tmp_path))
    status, body = client.json(f"/api/jobs/{waiting}/cancel", "POST", **token)
    assert (status, body["outcome"]) == (200, "cancelled"), body
    # At once, not from the status kept for 0.4 s from before (a second cancel got 409).
    assert (source(client, "inbox:gate")["queued"], source(client, "inbox:gate")["failed"]) == (
        0,
        1,
    )
    assert (tmp_path / "in-gate" / "failed" / "waiting.png").is_file()
    reason = (tmp_path / "in-gate" / "failed" / "waiting.png.error.txt").read_text()
    assert "attempts: 0" in reason  # it never ran: its claim to be cancelled is no try
    assert client.json("/api/jobs/999/cancel", "POST", **token)[0] == 404

    status, body = client.json(f"/api/jobs/{job}/cancel", "POST", **token)
    assert (status, body["outcome"]) == (200, "cancelling")
    assert wait_until(lambda: source(client, "inbox:gate")["failed"] == 2, 30), daemon.output()
    failed = {row["job"]: row["error"] for row in source(client, "inbox:gate")["failed_jobs"]}
    assert failed == dict.fromkeys([job, waiting], "Cancelled: cancelled by request")
    assert (tmp_path / "in-gate" / "failed" / "held.png").is_file()
    assert client.json(f"/api/jobs/{job}/cancel", "POST", **token)[0] == 409  # not running
    metrics = client.request("/metrics")[2].decode()
    assert 'stylebox_failed_jobs{reason="Cancelled",source="inbox:gate"} 2.0' in metrics

    daemon.gate.touch()  # type: ignore[attr-defined]
    status, body = client.json(f"/api/jobs/{job}/retry", "POST", **token)
    assert (status, body["outcome"]) == (200, "retry"), body
    assert wait_until(lambda: source(client, "inbox:gate")["done"] == 1, 30), daemon.output()
    assert not (tmp_path / "in-gate" / "failed" / "held.png.error.txt").exists()
    assert (tmp_path / "out-gate" / "held.png").is_file()
    assert client.json(f"/api/jobs/{job}/retry", "POST", **token)[0] == 409  # done, not failed
    assert client.json("/api/jobs/999/retry", "POST", **token)[0] == 404


def _journal_rows(folder: Path) -> list:
    from stylebox.daemon.journal import Journal

    journal = Journal(folder / "state" / "journal.sqlite3")
    try:
        return journal.jobs()
    finally:
        journal.close()


def _first_event(client: Client) -> tuple[http.client.HTTPConnection, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    connection.request("GET", "/events")
    response = connection.getresponse()
    assert response.status == 200
    assert response.getheader("content-type", "").startswith("text/event-stream")
    while True:
        line = response.readline().decode()
        if line.startswith("data: "):
            return connection, json.loads(line[6:])


def test_events_reload_and_sigterm(daemon: Daemon, tmp_path: Path) -> None:
    client: Client = daemon.client  # type: ignore[attr-defined]
    connection, report = _first_event(client)
    assert set(report["sources"]) == {"inbox:poster", "inbox:gate"}
    assert report["actions"] is True
    connection.close()

    # An address that is taken refuses the reload: the page stays where it is.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        write_config(tmp_path, config_text(taken.getsockname()[1], token=None))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in daemon.output(), 30), daemon.output()
    assert "cannot listen there" in daemon.output() and _answers(client)
    assert client.status()["actions"] is True  # the old config, token and all

    # On the page's own port the new address can be tried only once the page lets go of
    # it: taken there by another program, the page stays where it was.
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", client.port))
        taken.listen()
        text = config_text(client.port).replace("127.0.0.1:", "0.0.0.0:")
        write_config(tmp_path, text)
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: "status page kept at" in daemon.output(), 30), daemon.output()
    assert _answers(client)

    # A reload takes a new address and drops the token: actions are off from then on.
    port = free_port()
    write_config(tmp_path, config_text(port, token=None))
    daemon.process.send_signal(signal.SIGHUP)
    moved = Client(port)
    assert wait_until(lambda: _answers(moved), 30), daemon.output()
    assert not _answers(client)
    status, body = moved.json("/api/jobs/1/retry", "POST", **{"X-Stylebox-Token": TOKEN})
    assert status == 403 and "no [http] token" in body["error"]
    assert moved.status()["actions"] is False

    # SIGTERM with a client on the event stream: the daemon still stops at once.
    connection, _ = _first_event(moved)
    began = time.monotonic()
    assert daemon.stop(timeout=20) == 0
    assert time.monotonic() - began < 10
    connection.close()
    assert not _answers(moved)


def _answers(client: Client) -> bool:
    try:
        return client.request("/api/status")[0] == 200
    except OSError:
        return False
