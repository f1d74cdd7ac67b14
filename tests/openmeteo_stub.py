"""A local Open-Meteo stand-in: serves the documented responses in tests/fixtures/openmeteo over HTTP."""

import contextlib
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "openmeteo"
# latitude -> (HTTP status, fixture file); any other latitude gets the API's 400 error body.
ROUTES = {"47.6000": (200, "current_seattle.json"), "52.5200": (200, "current_missing_field.json")}


class StubHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        StubHandler.requests.append({"path": url.path, **query})
        status, name = ROUTES.get(query.get("latitude", ""), (400, "error_bad_latitude.json"))
        body = (FIXTURES / name).read_bytes()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def openmeteo_stub() -> Iterator[str]:
    """Run the stub on a free loopback port; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
