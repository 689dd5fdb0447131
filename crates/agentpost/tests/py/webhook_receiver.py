"""A webhook receiver for the test suite: verifies every delivery with the
`standardwebhooks` package from PyPI (the reference implementation of the
Standard Webhooks specification) and records what it received.

    python3 webhook_receiver.py DIR [PORT]

DIR/secrets   one `whsec_...` per line; a delivery is verified when any verifies,
              and the record lists which ones did (rotation overlap)
DIR/status    optional: the HTTP status to answer (default 200)
DIR/delay     optional: seconds to wait before answering
DIR/port      written at start: the port listened on
DIR/received.jsonl  one JSON object per delivery
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

DIR = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0
LOCK = threading.Lock()


def read(name, default=""):
    try:
        with open(os.path.join(DIR, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        verified_by = []
        errors = []
        for i, secret in enumerate(s for s in read("secrets").splitlines() if s.strip()):
            try:
                Webhook(secret.strip()).verify(body, headers)
                verified_by.append(i)
            except Exception as e:  # noqa: BLE001 - record every reason
                errors.append(f"{i}: {e}")
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        record = {
            "received_at": time.time(),
            "webhook_id": headers.get("webhook-id"),
            "webhook_timestamp": headers.get("webhook-timestamp"),
            "signatures": len(headers.get("webhook-signature", "").split()),
            "verified": bool(verified_by),
            "verified_by": verified_by,
            "errors": errors,
            "payload": payload,
        }
        with LOCK:
            with open(os.path.join(DIR, "received.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
        delay = float(read("delay", "0") or 0)
        if delay:
            time.sleep(delay)
        status = int(read("status", "200") or 200)
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
server.daemon_threads = True
with open(os.path.join(DIR, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.replace(os.path.join(DIR, "port.tmp"), os.path.join(DIR, "port"))
server.serve_forever()
