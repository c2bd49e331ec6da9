"""The status page's HTTP side: the page and its assets, the JSON API, server-sent events,
Prometheus metrics, the files of known jobs and the two token-guarded actions.

Everything is read through :class:`~stylebox.web.state.StatusReader`; the actions call the
daemon's own methods (:class:`~stylebox.web.state.Backend`). Read-only unless the config
has an ``[http] token``; an action must send it in the ``X-Stylebox-Token`` header, which a
page of another site cannot add without a CORS pre-flight that this server never grants.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from PIL import Image
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stylebox import logs
from stylebox.errors import StyleboxError
from stylebox.filecache import FileCache, file_key
from stylebox.images import decode_image
from stylebox.lossplot import render_svg
from stylebox.web.state import (
    PROBLEM_KINDS,
    SECONDS_BUCKETS,
    Backend,
    FileKind,
    StatusReader,
)

STATIC = Path(__file__).parent / "static"
TOKEN_HEADER = "X-Stylebox-Token"
#: Longest side of the previews of photos and results shown in the gallery (an input may be
#: 50 MP, its result as big): enough for a tile on a phone's screen at twice its density.
THUMBNAIL = 640
#: Widths the live loss chart is drawn at: the card's own, as the page asks, so that its
#: text is shown at the size it is drawn (11 px), not scaled down to a few pixels.
CHART_WIDTHS = (240, 640)
_HEADERS = {
    # The page uses only its own assets; nothing it shows can run script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def create_app(backend: Backend, stopping: threading.Event, interval: float = 1.0) -> Starlette:
    """The ASGI app over ``backend``. ``stopping``: set when the daemon stops, which ends
    open event streams at once. ``interval``: seconds between looks for changes."""
    reader = StatusReader(backend)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Metrics(reader))
    thumbnails = _Thumbnails()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def api_status(request: Request) -> Response:
        return _json(await anyio.to_thread.run_sync(reader.status))

    async def api_job(request: Request) -> Response:
        job = await anyio.to_thread.run_sync(reader.job, request.path_params["job_id"])
        return _json(job) if job is not None else _not_found()

    async def loss_svg(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        width = _chart_width(request.query_params.get("width"))
        upto = _step(request.query_params.get("step"))
        svg = await anyio.to_thread.run_sync(_loss_chart, reader, job_id, width, upto)
        if svg is None:
            return _not_found()
        return Response(svg, media_type="image/svg+xml", headers=_NO_CACHE)

    async def output(request: Request) -> Response:
        kind: FileKind = request.path_params["kind"]
        if kind not in _KINDS:
            return _not_found()
        job_id = request.path_params["job_id"]
        return _file(await anyio.to_thread.run_sync(reader.output_file, job_id, kind))

    async def snapshot(request: Request) -> Response:
        params = request.path_params
        job_id, step = params["job_id"], params["step"]
        return _file(await anyio.to_thread.run_sync(reader.snapshot_file, job_id, step))

    async def preview(path: Path | None) -> Response:
        data = await anyio.to_thread.run_sync(thumbnails.get, path) if path else None
        if data is None:
            return _not_found()
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def photo(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return await preview(await anyio.to_thread.run_sync(reader.input_file, job_id))

    async def result_preview(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        return await preview(await anyio.to_thread.run_sync(reader.output_file, job_id, "result"))

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            last, quiet = "", 0.0
            yield "retry: 2000\n\n"
            while not stopping.is_set():
                report = await anyio.to_thread.run_sync(reader.status)
                # Only what changed is sent (the time alone does not count).
                text = json.dumps({**report, "time": None})
                if text != last:
                    last, quiet = text, 0.0
                    yield f"data: {json.dumps(report)}\n\n"
                elif quiet >= 15:
                    quiet = 0.0
                    yield ": still here\n\n"  # keeps proxies from closing a quiet stream
                await asyncio.sleep(interval)
                quiet += interval

        headers = {**_NO_CACHE, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def metrics(request: Request) -> Response:
        data = await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(data, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def retry(request: Request) -> Response:
        refused = _refused(request, backend)
        if refused is not None:
            return refused
        try:
            outcome = await anyio.to_thread.run_sync(backend.retry, request.path_params["job_id"])
            reader.forget()
        except LookupError:
            return _no_job(request.path_params["job_id"])
        except StyleboxError as exc:
            return _json({"error": str(exc)}, 409)
        return _json({"job": request.path_params["job_id"], "outcome": outcome})

    async def cancel(request: Request) -> Response:
        refused = _refused(request, backend)
        if refused is not None:
            return refused
        job_id = request.path_params["job_id"]
        try:
            outcome = await anyio.to_thread.run_sync(backend.cancel, job_id)
            reader.forget()
        except LookupError:
            return _no_job(job_id)
        except StyleboxError as exc:
            return _json({"error": str(exc)}, 409)
        return _json({"job": job_id, "outcome": outcome})

    routes = [
        Route("/", index),
        Route("/api/status", api_status),
        Route("/api/jobs/{job_id:int}", api_job),
        Route("/api/jobs/{job_id:int}/loss.svg", loss_svg),
        Route("/api/jobs/{job_id:int}/retry", retry, methods=["POST"]),
        Route("/api/jobs/{job_id:int}/cancel", cancel, methods=["POST"]),
        Route("/files/{job_id:int}/input", photo),
        Route("/files/{job_id:int}/result/preview", result_preview),
        Route("/files/{job_id:int}/steps/{step:int}.png", snapshot),
        Route("/files/{job_id:int}/{kind:str}", output),
        Route("/events", events),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])
    app.state.reader = reader
    return app


class _SecurityHeaders:
    """Adds :data:`_HEADERS` to every response (plain ASGI: event streams pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)


_NO_CACHE = {"Cache-Control": "no-store"}
_KINDS = frozenset({"result", "animation", "loss", "manifest"})


def _json(data: Any, status: int = 200) -> Response:
    return JSONResponse(data, status_code=status, headers=_NO_CACHE)


def _not_found() -> Response:
    return _json({"error": "not found"}, 404)


def _no_job(job_id: int) -> Response:
    return _json({"error": f"no such job {job_id}"}, 404)


#: An output opened on its own (a link's new tab): the browser's own viewer for an image or
#: JSON styles it inline, which the page's policy refused (a GIF sat unscaled in a corner);
#: still nothing in it runs script.
_FILE_POLICY = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def _file(path: Path | None) -> Response:
    if path is None:
        return _not_found()
    headers = {"Cache-Control": "max-age=60", "Content-Security-Policy": _FILE_POLICY}
    return FileResponse(path, headers=headers)


def _chart_width(asked: str | None) -> int:
    """The live chart's width: the one asked for, within :data:`CHART_WIDTHS`."""
    low, high = CHART_WIDTHS
    try:
        return min(high, max(low, int(asked or high)))
    except ValueError:
        return high


def _step(asked: str | None) -> int | None:
    try:
        return int(asked) if asked else None
    except ValueError:
        return None


def _loss_chart(
    reader: StatusReader, job_id: int, width: int, upto: int | None = None
) -> str | None:
    """A job's loss curves so far, titled by its output stem as its saved plot is;
    ``upto``: to that step only, the one the page's card says (the history on disk may run
    ahead of the journal's step, or still hold an earlier run's steps a resumed run redoes)."""
    row = reader.row(job_id)
    history = reader.history(job_id) if row is not None else []
    if upto is not None:
        history = [entry for entry in history if entry.get("step", 0) <= upto]
    if row is None or not history:
        return None
    title = row.stem or Path(row.name).stem
    return render_svg(history, title=title, width=width, height=max(200, width // 2))


def _refused(request: Request, backend: Backend) -> Response | None:
    """Why an action is refused, or ``None`` when the request carries the config's token."""
    token = backend.token
    if token is None:
        return _json({"error": "actions are off: the config has no [http] token"}, 403)
    given = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        # ``ask_token``: the page asks for the token again (changed by a reload, say).
        return _json({"error": f"a wrong or missing {TOKEN_HEADER} header", "ask_token": True}, 403)
    return None


class _Thumbnails:
    """Photos and results made small enough for a phone, once each: the latest kept in
    memory, up to ``budget`` bytes, by the file's identity (a file replaced is made anew)."""

    def __init__(self, budget: int = 48 * 1024 * 1024) -> None:
        self._cache: FileCache[bytes] = FileCache(budget=budget, weigh=len)
        # One decode at a time: a gallery of new 50 MP results asks for a dozen at once,
        # each some 150 MB decoded.
        self._decoding = threading.Lock()

    def get(self, path: Path) -> bytes | None:
        try:
            key = file_key(path)
        except OSError:
            return None
        data = self._cache.get(key)
        if data is not None:
            return data
        with self._decoding:
            data = self._cache.get(key)  # made while this waited
            if data is not None:
                return data
            try:
                with logs.unwarned():  # its job's read said them
                    image = decode_image(path).rgb  # the daemon's own guards: size, format
            except (StyleboxError, OSError):
                return None
            image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            # A JPEG: a photo's PNG at this size is still some 500 kB, a phone's gallery 10 MB.
            image.save(buffer, "JPEG", quality=85)
            data = buffer.getvalue()
            self._cache.put(key, data)
        return data


class _Metrics(Collector):
    """Everything read at scrape time from the journal, so figures survive restarts and
    cost nothing between scrapes."""

    def __init__(self, reader: StatusReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        journal = self.reader.journal
        counts = journal.counts() if journal else {}
        sources = set(self.reader.backend.web_sources()) | set(counts)
        jobs = GaugeMetricFamily("stylebox_jobs", "Jobs by state", labels=["source", "state"])
        depth = GaugeMetricFamily(
            "stylebox_queue_depth", "Jobs waiting to run (retries included)", labels=["source"]
        )
        for source in sorted(sources):
            for state in ("queued", "running", "done", "failed"):
                jobs.add_metric([source, state], counts.get(source, {}).get(state, 0))
            depth.add_metric([source], counts.get(source, {}).get("queued", 0))
        yield jobs
        yield depth
        seconds = HistogramMetricFamily(
            "stylebox_job_seconds", "Seconds a done job took, per plugin", labels=["plugin"]
        )
        for plugin, count, total, cumulative in journal.seconds_histogram() if journal else []:
            buckets = [(str(b), n) for b, n in zip(SECONDS_BUCKETS, cumulative, strict=True)]
            seconds.add_metric([plugin], [*buckets, ("+Inf", count)], total)
        yield seconds
        rate = GaugeMetricFamily(
            "stylebox_steps_per_second",
            "Optimiser steps a second of running jobs",
            labels=["source"],
        )
        for source, value in sorted(self.reader.steps_per_second().items()):
            rate.add_metric([source], value)
        yield rate
        # A gauge: the failed jobs the journal holds now (one retried by hand leaves it), so
        # the count can fall, which a counter must never do.
        failures = GaugeMetricFamily(
            "stylebox_failed_jobs",
            "Failed jobs in the journal, by error class",
            labels=["source", "reason"],
        )
        for source, reason, count in journal.failures() if journal else []:
            failures.add_metric([source, reason], count)
        yield failures
        # Each kind always present (0 when none): an alert on "> 0" needs the series.
        problems = GaugeMetricFamily(
            "stylebox_problems",
            "What keeps the daemon from serving its config: disabled sources, unwatched "
            "inboxes, a refused reload, the status page kept at its old address",
            labels=["kind"],
        )
        kinds = Counter(problem["kind"] for problem in self.reader.backend.problems())
        for kind in PROBLEM_KINDS:
            problems.add_metric([kind], kinds[kind])
        yield problems
