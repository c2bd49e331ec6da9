"""uvicorn in a thread of the daemon: started when ``[http] listen`` is set, stopped with
it (SIGTERM) or when a reload changes the address."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from stylebox.config import http_address
from stylebox.errors import ConfigError
from stylebox.web.app import create_app
from stylebox.web.state import Backend

log = logging.getLogger("stylebox.http")


def check_listen(listen: str, any_port: bool = False) -> None:
    """Raise :class:`ConfigError` (one line) if ``listen`` cannot be listened on now: the
    port taken, or the host not this machine's. Each address the host names is tried as
    asyncio (under uvicorn) binds them. ``any_port``: the host alone (the port is the
    running page's own, which it holds until it moves)."""
    host, port = http_address(listen)
    try:
        infos = socket.getaddrinfo(
            host, 0 if any_port else port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                probe.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"[http] listen = {listen!r}: cannot listen there ({exc.strerror or exc})"
        ) from None


class HttpServer:
    """The status page of ``backend`` at ``listen`` (``host:port``)."""

    def __init__(self, backend: Backend, listen: str, interval: float = 1.0) -> None:
        self.listen = listen
        self.host, self.port = http_address(listen)
        self._stopping = threading.Event()
        self.app = create_app(backend, self._stopping, interval)
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,  # the daemon's own logging, one JSON line an event
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Serve in a background thread; raises :class:`ConfigError` (one line) when the
        address cannot be listened on (taken, not this machine's)."""
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ConfigError(f"[http] listen = {self.listen!r}: cannot listen there")
            time.sleep(0.02)
        log.info(
            "status page at http://%s/", self.listen, extra={"event": "http", "listen": self.listen}
        )

    def stop(self, timeout: float = 5.0) -> None:
        """End open event streams, then the server."""
        self._stopping.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.app.state.reader.close()

    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()
