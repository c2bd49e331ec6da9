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
import xml.etree.ElementTree as ET
from contextlib import closing
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from conftest import MENDED_EXPLODES, broken_plugins_site, photo
from daemon_helpers import Daemon, gated_env, wait_until, write_config
from PIL import Image

from stylebox.config import HttpConfig, parse_config
from stylebox.daemon.journal import Journal, NewJob, journal_path
from stylebox.errors import Cancelled, ConfigError, Truncated
from stylebox.web.app import THUMBNAIL, _loss_chart
from stylebox.web.state import PROBLEM_KINDS, SourceInfo, StatusReader

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
    # Opened on its own, the browser's viewer may style it; nothing in it may run script.
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy and "style-src 'unsafe-inline'" in policy, policy
    assert "script-src" not in policy
    status, headers, body = client.request("/")
    assert "default-src 'self'" in headers["content-security-policy"]  # the page's own
    status, _, body = client.request(f"/files/{job}/manifest")
    assert json.loads(body)["output"]["result"] == "photo.png"
    status, headers, body = client.request(f"/files/{job}/input")  # from processed/
    assert status == 200 and headers["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
    # Other bytes where the journal points (a photo replaced while its job ran stays in the
    # inbox, where its input_path still is): not shown as this job's photo.
    photo(24, 16, seed=9).save(tmp_path / "in-poster" / "processed" / "photo.png")
    assert client.request(f"/files/{job}/input")[0] == 404
    # Nor offered in the gallery, which says the photo moved away instead of a broken image.
    assert wait_until(lambda: source(client, "inbox:poster")["results"][0]["input"] is None, 10)
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


def test_a_copy_waiting_for_its_bytes_job_and_then_set_aside_is_listed(
    daemon: Daemon, tmp_path: Path
) -> None:
    # A copy of a photo whose job runs waits in the inbox for that job's end, in no list:
    # it sat there for minutes with nothing on the page saying why.
    client: Client = daemon.client  # type: ignore[attr-defined]
    drop(tmp_path / "in-gate", "photo.png", seed=3)
    assert wait_until(lambda: source(client, "inbox:gate")["running"] == 1, 30), daemon.output()
    drop(tmp_path / "in-gate", "photo copy.png", seed=3)
    [job] = [j["job"] for j in source(client, "inbox:gate")["running_jobs"]]
    said = f"photo copy.png waits for job {job}, of the same bytes, to end: then it is that "
    listed = lambda: source(client, "inbox:gate")["left_alone"]  # noqa: E731
    assert wait_until(lambda: any(why.startswith(said) for why in listed()), 30), listed()
    daemon.gate.touch()  # type: ignore[attr-defined]
    assert wait_until(lambda: listed() == [], 30), listed()  # its duplicate now
    assert (tmp_path / "in-gate" / "processed" / "photo copy.png").is_file()
    # Set aside, it is said so (it vanished from the inbox and showed nowhere).
    entry = source(client, "inbox:gate")
    assert entry["set_aside"] == [
        f"photo copy.png: the same bytes and settings as job {job} (photo.png); not stylised "
        "again, moved to processed/ as photo copy.png"
    ]
    assert entry["set_aside_count"] == 1


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
        assert result["file"] == "2026/a.png"  # as the log and status name it, not "a.png"
        outputs = tmp_path / "out-shelf" / "2026"
        status, _, body = client.request(result["result"])
        assert status == 200 and body == (outputs / "a.png").read_bytes()
        status, _, body = client.request(f"/files/{result['job']}/manifest")
        assert status == 200 and body == (outputs / "a.json").read_bytes()
    finally:
        gate.touch()
        daemon.stop()


def test_a_result_is_shown_by_a_bounded_preview_the_full_one_a_click_away(
    daemon: Daemon, tmp_path: Path
) -> None:
    # A 7680x5120 result was shown in a 375 px tile as itself: 82 MB.
    client: Client = daemon.client  # type: ignore[attr-defined]
    staged = tmp_path / ".staged-big.png"
    photo(1600, 1000, seed=5).save(staged)
    os.rename(staged, tmp_path / "in-poster" / "big.png")
    assert wait_until(lambda: source(client, "inbox:poster")["done"] == 1, 60), daemon.output()
    entry = source(client, "inbox:poster")
    assert entry["outbox"] == str(tmp_path / "out-poster")  # where all results are
    [result] = entry["results"]
    assert result["preview"] == f"/files/{result['job']}/result/preview"
    full = (tmp_path / "out-poster" / "big.png").read_bytes()
    status, _, body = client.request(result["result"])
    assert status == 200 and body == full

    status, headers, body = client.request(result["preview"])
    assert status == 200 and headers["content-type"] == "image/jpeg", body[:200]
    assert headers["cache-control"] == "max-age=3600"
    with Image.open(BytesIO(body)) as preview:
        assert preview.size == (THUMBNAIL, THUMBNAIL * 1000 // 1600)
    assert len(body) < len(full) / 5
    assert client.request(result["preview"])[2] == body  # kept, not made again differently
    # Only a result has one: no other output, nor a job that is not done.
    assert client.request(f"/files/{result['job']}/animation/preview")[0] == 404
    assert client.request(f"/files/{result['job'] + 1}/result/preview")[0] == 404


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
        f"/files/{job}/result/preview/..",
        f"/files/{job}/result/%2e%2e/preview",
        f"/files/{job}/result/..%2fpreview",
        f"/files/{job}/manifest/preview",
        f"/files/{job}/../{job}/result/preview",
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
    assert client.request(f"/files/{job}/result/preview")[0] == 200  # the control
    result.unlink()
    os.symlink(secret, result)
    assert client.request(f"/files/{job}/result")[0] == 404
    assert client.request(f"/files/{job}/result/preview")[0] == 404


def test_actions_need_the_token_cancel_fails_a_running_job_and_retry_queues_it_again(
    daemon: Daemon, tmp_path: Path
) -> None:
    client: Client = daemon.client  # type: ignore[attr-defined]
    inbox = tmp_path / "in-gate"
    # A mask and a sidecar go with it to failed/, and come back with it when retried.
    photo(24, 16, seed=5).save(inbox / "held.mask.png")
    (inbox / "held.png.xmp").write_text("<x:xmpmeta/>\n")
    drop(inbox, "held.png", seed=3)
    assert wait_until(lambda: source(client, "inbox:gate")["running"] == 1, 30), daemon.output()
    job = source(client, "inbox:gate")["running_jobs"][0]["job"]

    assert client.json(f"/api/jobs/{job}/cancel", "POST")[0] == 403
    status, body = client.json(f"/api/jobs/{job}/cancel", "POST", **{"X-Stylebox-Token": "no"})
    assert status == 403 and "X-Stylebox-Token" in body["error"]
    assert body["ask_token"] is True  # the page asks for it again and tries once more
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
    assert "attempts: 0 (it never ran)" in reason  # its claim to be cancelled is no try
    assert client.json("/api/jobs/99999/cancel", "POST", **token) == (
        404,
        {"error": "no such job 99999"},
    )

    status, body = client.json(f"/api/jobs/{job}/cancel", "POST", **token)
    assert (status, body["outcome"]) == (200, "cancelling")
    assert wait_until(lambda: source(client, "inbox:gate")["failed"] == 2, 30), daemon.output()
    failed = {row["job"]: row["error"] for row in source(client, "inbox:gate")["failed_jobs"]}
    assert failed == dict.fromkeys([job, waiting], "Cancelled: cancelled by request")
    assert (tmp_path / "in-gate" / "failed" / "held.png").is_file()
    followers = ["held.mask.png", "held.png.xmp"]
    failed_dir = inbox / "failed"
    assert wait_until(lambda: all((failed_dir / name).is_file() for name in followers), 10)
    assert client.json(f"/api/jobs/{job}/cancel", "POST", **token)[0] == 409  # not running
    metrics = client.request("/metrics")[2].decode()
    assert 'stylebox_failed_jobs{reason="Cancelled",source="inbox:gate"} 2.0' in metrics

    daemon.gate.touch()  # type: ignore[attr-defined]
    status, body = client.json(f"/api/jobs/{job}/retry", "POST", **token)
    assert (status, body["outcome"]) == (200, "retry"), body
    assert wait_until(lambda: source(client, "inbox:gate")["done"] == 1, 30), daemon.output()
    assert not (tmp_path / "in-gate" / "failed" / "held.png.error.txt").exists()
    assert (tmp_path / "out-gate" / "held.png").is_file()
    processed = inbox / "processed"
    assert wait_until(lambda: all((processed / name).is_file() for name in followers), 10)
    assert not any((failed_dir / name).exists() for name in followers)  # they ran with it
    assert client.json(f"/api/jobs/{job}/retry", "POST", **token)[0] == 409  # done, not failed
    # Not the bare id, which read as an error code.
    assert client.json("/api/jobs/99999/retry", "POST", **token) == (
        404,
        {"error": "no such job 99999"},
    )


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
    assert wait_until(lambda: len(client.status()["problems"]) == 1, 5)  # past its cache
    [refused] = client.status()["problems"]
    assert refused["kind"] == "reload_refused" and "cannot listen there" in refused["text"]
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
    assert wait_until(lambda: len(client.status()["problems"]) == 1, 5)
    [kept] = client.status()["problems"]
    assert kept["kind"] == "http_kept" and kept["text"].startswith(
        f"the status page stays at 127.0.0.1:{client.port}, not at the config's "
        f"0.0.0.0:{client.port}: "
    )
    assert daemon.receive("; status page at its old address (see the log)", 10)  # systemd

    # A reload takes a new address and drops the token: actions are off from then on.
    port = free_port()
    write_config(tmp_path, config_text(port, token=None))
    daemon.process.send_signal(signal.SIGHUP)
    moved = Client(port)
    assert wait_until(lambda: _answers(moved), 30), daemon.output()
    assert not _answers(client)
    status, body = moved.json("/api/jobs/1/retry", "POST", **{"X-Stylebox-Token": TOKEN})
    assert status == 403 and "no [http] token" in body["error"]
    assert "ask_token" not in body  # no token would do: the page does not ask for one
    assert moved.status()["actions"] is False
    assert wait_until(lambda: moved.status()["problems"] == [], 5)  # the file's config runs

    # SIGTERM with a client on the event stream: the daemon still stops at once.
    connection, _ = _first_event(moved)
    began = time.monotonic()
    assert daemon.stop(timeout=20) == 0
    assert time.monotonic() - began < 10
    connection.close()
    assert not _answers(moved)


def test_what_keeps_the_daemon_from_its_config_is_reported_until_it_is_mended(
    tmp_path: Path,
) -> None:
    # A plugin that could not load, an inbox folder replaced by a file and a refused reload
    # were said once in the daemon's log: the page and /metrics showed a healthy daemon.
    site = broken_plugins_site(tmp_path)
    port = free_port()
    broken = (
        '\n[[inbox]]\nname = "explodes"\npath = "in-explodes"\noutbox = "out-explodes"\n'
        'plugin = "explodes"\n'
    )
    config = write_config(tmp_path, config_text(port) + broken)
    env, _, gate = gated_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    daemon = Daemon(config, env)
    client = Client(port)

    def problems() -> list[tuple[str, str | None, str]]:
        return [(p["kind"], p["source"], p["text"]) for p in client.status()["problems"]]

    def metric(kind: str) -> str:
        found = re.search(rf'stylebox_problems{{kind="{kind}"}} (\S+)', _metrics(client))
        assert found is not None
        return found[1]

    try:
        daemon.wait_ready()
        [(kind, source, text)] = problems()
        assert (kind, source) == ("disabled", "inbox:explodes")
        assert text.startswith("inbox explodes is disabled: plugin 'explodes'")
        assert "no GPU driver here" in text
        assert text.endswith(
            "its files wait until the plugin is mended and the daemon reloaded (SIGHUP), or "
            "restarted where the plugin's code changed"
        )
        assert [metric(k) for k in PROBLEM_KINDS] == ["1.0", "0.0", "0.0", "0.0"]

        inbox = tmp_path / "in-poster"
        inbox.rename(tmp_path / "aside")
        inbox.write_text("not a folder")
        assert wait_until(lambda: len(problems()) == 2, 20), daemon.output()[-3000:]
        assert problems()[1] == (
            "unwatched",
            "inbox:poster",
            f"inbox poster: its folder {inbox} was replaced by something that is not a folder; "
            "nothing dropped there is seen until it is a folder again",
        )
        inbox.unlink()
        (tmp_path / "aside").rename(inbox)
        assert wait_until(lambda: len(problems()) == 1, 20), daemon.output()[-3000:]

        config.write_text(config.read_text().replace("rescan_seconds = 2", "rescan_seconds = -1"))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: len(problems()) == 2, 20), daemon.output()[-3000:]
        report = client.status()["problems"][1]
        assert report["kind"] == "reload_refused" and report["source"] is None
        assert abs(report["since"] - time.time()) < 30
        assert report["text"].startswith("reload refused, the config before it still runs: ")
        assert "rescan_seconds" in report["text"] and "\n" not in report["text"]
        assert metric("reload_refused") == "1.0"
        assert daemon.receive("; reload refused (see the log)", 10)  # systemctl status

        # Mended: the plugin and the config. The reload that applies them clears both.
        (site / "brokenplugins" / "explodes.py").write_text(MENDED_EXPLODES)
        config.write_text(config.read_text().replace("rescan_seconds = -1", "rescan_seconds = 2"))
        daemon.process.send_signal(signal.SIGHUP)
        assert wait_until(lambda: problems() == [], 20), daemon.output()[-3000:]
        assert [metric(k) for k in PROBLEM_KINDS] == ["0.0"] * 4
    finally:
        gate.touch()
        daemon.stop()
    assert daemon.process.returncode == 0, daemon.output()[-3000:]


def _metrics(client: Client) -> str:
    return client.request("/metrics")[2].decode()


def _answers(client: Client) -> bool:
    try:
        return client.request("/api/status")[0] == 200
    except OSError:
        return False


# -- the status reader, over a journal of its own -------------------------------------------


@dataclass
class Backend:
    """The daemon as the web layer sees it, with nothing behind its actions."""

    state_dir: Path
    token: str | None = None
    sources: dict[str, SourceInfo] = field(default_factory=dict)

    @property
    def journal_path(self) -> Path:
        return journal_path(self.state_dir)

    def web_sources(self) -> dict[str, SourceInfo]:
        return self.sources

    def problems(self) -> list[dict[str, Any]]:
        return []

    def retry(self, job_id: int) -> str:
        raise KeyError(job_id)

    def cancel(self, job_id: int) -> str:
        raise KeyError(job_id)


def _one_job(folder: Path) -> tuple[Journal, int]:
    journal = Journal(journal_path(folder))
    entry = NewJob("inbox:x", folder / "a.png", "ab" * 32, "gatys", "p", "key", "a")
    [(row, _)] = journal.add([entry])
    return journal, row.id


def test_a_running_jobs_rate_and_eta_are_of_its_own_claim_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shown after a retry: the cancelled attempt's "step 10 / 60 · 12.4 steps/s"; after a
    # restart 18.6 steps/s against a steady 3-7 (the steps of the earlier run counted in).
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    journal, job = _one_job(tmp_path)
    reader = StatusReader(Backend(tmp_path), ttl=0)

    def look(at: float, step: int | None = None) -> tuple[Any, Any, Any]:
        """The card's step, steps/s and seconds left at ``at``, the job at ``step`` then."""
        clock[0] = at
        if step is not None:
            journal.set_progress(job, step, 60)
        [running] = reader.status()["sources"]["inbox:x"]["running_jobs"]
        return running["step"], running["steps_per_second"], running["eta_seconds"]

    try:
        journal.claim("elsewhere:1", 30)
        # No rate from the claim's time alone, nor from a first look: when it saw this step,
        # not when the job reached it.
        assert look(1000.8, 10) == (10, None, None)
        assert look(1001.8, 14) == (14, None, None)
        assert look(1002.8, 18) == (18, 4.0, 10.5)
        assert look(1003.3) == (18, 4.0, 10.5)

        # Cancelled, then retried: the new claim's row still says step 18 until it reports.
        clock[0] = 1005.0
        journal.finish(job, "failed", error=Cancelled("cancelled by request"))
        journal.retry_failed(job, tmp_path / "a.png")
        journal.claim("elsewhere:1", 30)
        assert look(1005.5) == (None, None, None)
        assert look(1006.0, 3) == (3, None, None)  # back to the start: a change, seen now
        assert look(1007.0, 7) == (7, 4.0, 13.2)

        # The daemon restarted (a new reader) and the job resumed from a checkpoint at 5.
        clock[0] = 1100.0
        journal.requeue(job)
        journal.claim("elsewhere:2", 30)
        reader = StatusReader(Backend(tmp_path), ttl=0)
        assert look(1100.5) == (None, None, None)  # a new claim: no step of its own yet
        assert look(1101.5, 5) == (5, None, None)
        assert look(1102.5, 6) == (6, 1.0, 54.0)
        # Past its last step it writes its result: said so, no "0 s left" for that while.
        assert look(1103.5, 60) == (60, 54.0, None)
        [running] = reader.status()["sources"]["inbox:x"]["running_jobs"]
        assert running["writing"] is True
    finally:
        reader.close()
        journal.close()


def test_a_queued_job_held_back_after_an_error_says_why(tmp_path: Path) -> None:
    # The page said "retry in 4 s" of a partial copy given time to grow, and nothing of
    # why; stylebox status said it. A job merely queued says nothing of the kind.
    journal, job = _one_job(tmp_path)
    reader = StatusReader(Backend(tmp_path), ttl=0)
    try:
        [queued] = reader.status()["sources"]["inbox:x"]["queued_jobs"]
        assert (queued["retry_at"], queued["reason"]) == (None, None)
        journal.claim("elsewhere:1", 30)
        journal.requeue(job, delay=60.0, error=Truncated("a.png is truncated (a partial copy?)"))
        [queued] = reader.status()["sources"]["inbox:x"]["queued_jobs"]
        assert queued["retry_at"] is not None
        assert queued["reason"] == "Truncated: a.png is truncated (a partial copy?)"
    finally:
        reader.close()
        journal.close()


def test_only_a_job_whose_history_has_a_loss_is_given_a_chart(tmp_path: Path) -> None:
    # A fast job reports its one step without a loss: the page asked for its chart and got a
    # 404, one console error a job.
    journal, job = _one_job(tmp_path)
    reader = StatusReader(Backend(tmp_path), ttl=0)
    try:
        journal.claim("elsewhere:1", 30)
        journal.set_progress(job, 1, 1)
        history = tmp_path / "jobs" / str(job) / "history.jsonl"
        history.parent.mkdir(parents=True)
        history.write_text('{"step": 1}\n')
        [running] = reader.status()["sources"]["inbox:x"]["running_jobs"]
        assert running["loss"] is None
        history.write_text('{"step": 1, "loss": 2.5}\n')
        [running] = reader.status()["sources"]["inbox:x"]["running_jobs"]
        assert running["loss"] == f"/api/jobs/{job}/loss.svg"
    finally:
        reader.close()
        journal.close()


def test_a_running_jobs_card_and_chart_say_the_same_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a restart the card said step 18 while its chart ran to step 23.
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    journal, job = _one_job(tmp_path)
    reader = StatusReader(Backend(tmp_path, sources={"inbox:x": SourceInfo(tmp_path, "gatys")}))
    history = tmp_path / "jobs" / str(job) / "history.jsonl"
    history.parent.mkdir(parents=True)
    history.write_text("".join(f'{{"step": {n}, "loss": {100 / n}}}\n' for n in range(1, 24)))

    def card() -> tuple[Any, int]:
        """The card's step, and how many steps its chart draws when asked for it."""
        reader.forget()
        [running] = reader.status()["sources"]["inbox:x"]["running_jobs"]
        svg = _loss_chart(reader, job, 640, running["step"])
        assert svg is not None
        [line] = [
            line
            for line in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}polyline")
            if line.get("data-series") == "loss"
        ]
        return running["step"], len(line.get("points", "").split())

    try:
        journal.claim("elsewhere:1", 30)
        journal.set_progress(job, 18, 60)
        # The history of the run before the restart, which this one resumed at 15 and redoes.
        os.utime(history, (999.0, 999.0))
        assert card() == (18, 18)
        # This run's own history, ahead of the journal's step (written once a second at most,
        # and not the last step before a pause).
        os.utime(history, (1000.5, 1000.5))
        assert card() == (23, 23)
    finally:
        reader.close()
        journal.close()


def test_serve_refuses_to_start_where_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path,
            f'state_dir = "state"\n[http]\nlisten = "127.0.0.1:{port}"\n[[inbox]]\nname = "p"\n'
            'path = "in"\noutbox = "out"\nplugin = "posterize"\n',
        )
        # Twice: a refused start is a clean stop, so the second has no unclean one to warn
        # of (the journal was left open, and its next start said jobs may be lost).
        for _ in range(2):
            result = subprocess.run(
                [sys.executable, "-m", "stylebox.cli", "serve", "--config", str(config)],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert result.returncode == 2
            # Our one line alone: tried before uvicorn, which logged its own bind error first.
            said = f"[http] listen = '127.0.0.1:{port}': cannot listen there"
            assert result.stderr.splitlines() == [
                f"stylebox: config error: {said} (Address already in use)"
            ]
