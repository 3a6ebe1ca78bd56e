"""Collectors the sink tests run for real: an HTTP receiver that can misbehave, rsyslogd, kernels."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import psutil

from kernel_guard.testing import KernelSession


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def dedupe(events: List[dict]) -> List[dict]:
    """Events in arrival order, keeping the first delivery of each event.id."""
    seen: set = set()
    out = []
    for event in events:
        if event["event"]["id"] not in seen:
            seen.add(event["event"]["id"])
            out.append(event)
    return out


class HttpCollector:
    """A local HTTP receiver: ``mode`` is ok, slow, 500, 429 or poison (400 for a batch with
    an event whose reason is "poison"); ``stop()`` takes it down."""

    def __init__(self, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.mode = "ok"
        self.slow_seconds = 2.0
        self.requests: List[Dict[str, Any]] = []
        self.events: List[dict] = []
        self._lock = threading.Lock()
        self._server: Optional[http.server.ThreadingHTTPServer] = None

    def start(self) -> "HttpCollector":
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.headers.get("Content-Type") == "application/json":
                    events = json.loads(body)
                else:
                    events = [json.loads(line) for line in body.splitlines() if line.strip()]
                mode = collector.mode
                if mode == "poison" and any(e["event"].get("reason") == "poison" for e in events):
                    mode = "400"  # refuses a batch holding the poison event, takes the rest
                with collector._lock:
                    collector.requests.append({"headers": dict(self.headers), "count": len(events),
                                               "mode": mode, "path": self.path})
                    if mode in ("ok", "slow", "500", "poison"):
                        # a 500 after reading: the batch may have been half taken (duplicates follow)
                        collector.events.extend(events)
                if mode == "slow":
                    time.sleep(collector.slow_seconds)
                status = {"500": 500, "429": 429, "400": 400}.get(mode, 200)
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Take the collector down (connections are refused until start())."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def ids(self) -> set:
        with self._lock:
            return {e["event"]["id"] for e in self.events}

    def snapshot(self) -> List[dict]:
        with self._lock:
            return list(self.events)


RSYSLOG_CONF = """\
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
module(load="imudp")
module(load="imuxsock" SysSock.Use="off")
input(type="imtcp" port="{port}" address="127.0.0.1")
input(type="imudp" port="{port}" address="127.0.0.1")
input(type="imuxsock" Socket="{unix}" UseSpecialParser="off" ParseHostname="on" CreatePath="on")
template(name="kg" type="string"
         string="%protocol-version%|%syslogfacility-text%|%syslogseverity-text%|%app-name%|%procid%|%msgid%|%msg%\\n")
*.* action(type="omfile" file="{out}" template="kg")
"""


class Rsyslogd:
    """rsyslogd in the foreground with its own config, work directory and loopback port."""

    def __init__(self, directory: str) -> None:
        self.rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        self.out = os.path.join(directory, "messages.log")
        self.unix = os.path.join(directory, "log.sock")
        self.conf = os.path.join(directory, "rsyslog.conf")
        self.pidfile = os.path.join(directory, "rsyslogd.pid")
        with open(self.conf, "w") as fh:
            fh.write(RSYSLOG_CONF.format(work=directory, port=self.port, out=self.out, unix=self.unix))
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Rsyslogd":
        log = open(os.path.join(self.dir, "rsyslogd.stderr"), "ab")
        self.proc = subprocess.Popen([self.rsyslogd, "-n", "-f", self.conf, "-i", self.pidfile],
                                     stdout=log, stderr=log)
        log.close()
        wait_until(self._listening, 15, f"rsyslogd to listen on 127.0.0.1:{self.port}")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            with open(os.path.join(self.dir, "rsyslogd.stderr")) as fh:
                raise AssertionError(f"rsyslogd exited: {fh.read()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                pass
        except OSError:
            return False
        return os.path.exists(self.unix)

    def stop(self) -> None:
        """SIGTERM and wait (rsyslogd writes out what it has read); SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def lines(self) -> List[List[str]]:
        """Received messages, split into the template's fields (the message last)."""
        try:
            with open(self.out, encoding="utf-8") as fh:
                return [line.rstrip("\n").split("|", 6) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def events(self) -> List[dict]:
        return [json.loads(fields[6]) for fields in self.lines()]


class LoggedKernel(KernelSession):
    """A real kernel whose standard error (the server log) goes to a file."""

    def __init__(self, *args: Any, stderr_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stderr_path = stderr_path

    def start(self) -> None:
        with open(self.stderr_path, "ab") as err:
            kwargs: Dict[str, Any] = {"env": self.env, "stderr": err}
            if self.cwd:
                kwargs["cwd"] = self.cwd
            self.manager.start_kernel(**kwargs)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=self.startup_timeout)

    @property
    def process(self) -> psutil.Process:
        return psutil.Process(self.manager.provisioner.process.pid)  # type: ignore[union-attr]

    def stderr_text(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def timed(self, code: str, timeout: float = 30) -> float:
        """Seconds from execute request to reply for ``code`` (asserting it ran)."""
        started = time.perf_counter()
        result = self.execute(code, timeout=timeout)
        elapsed = time.perf_counter() - started
        assert result.status == "ok", result.error_text
        return elapsed


#: the structure of every stream (opened and closed by the pipeline), not what a test emitted
STREAM_ACTIONS = ("stream-started", "stream-ended")


def without_streams(events: List[dict]) -> List[dict]:
    """The events a test emitted, without its streams' start and end."""
    return [e for e in events if e["event"]["action"] not in STREAM_ACTIONS]
