"""A counting proxy in front of the moto server, for section 3's idle figures: every S3 and SQS request passes
through unchanged, and each SQS request's queue is written to a log, one line a request ("<epoch> sqs <queue>"),
so that what the daemon, its sensors and runs ask of each queue can be counted."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from s3sync_dagster.commands.demo import LOOPBACK

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def _queue_of(headers: dict[str, str], body: bytes) -> str | None:
    """The queue an SQS request names (JSON or query protocol); None for an S3 request."""
    target = headers.get("x-amz-target", "")
    if target.startswith("AmazonSQS."):
        try:
            url = json.loads(body or b"{}").get("QueueUrl", "")
        except ValueError:
            url = ""
        return url.rsplit("/", 1)[-1] or target
    if b"Action=" in body:
        urls = parse_qs(body.decode(errors="replace")).get("QueueUrl", [""])
        return urls[0].rsplit("/", 1)[-1] or "sqs"
    return None


@contextmanager
def proxied(endpoint_url: str, log: Path) -> Iterator[str]:
    """A proxy to endpoint_url on a free loopback port, logging SQS requests to `log`; yields its URL."""
    upstream = urlsplit(endpoint_url)
    lock = threading.Lock()
    log.write_text("")

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {name.lower(): value for name, value in self.headers.items()}
            queue = _queue_of(headers, body)
            if queue is not None:
                with lock, log.open("a") as out:
                    out.write(f"{time.time():.3f} sqs {queue}\n")
            connection = http.client.HTTPConnection(upstream.hostname or LOOPBACK, upstream.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body or None, headers=dict(self.headers.items()))
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                connection.close()

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    server = ThreadingHTTPServer((LOOPBACK, 0), Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
