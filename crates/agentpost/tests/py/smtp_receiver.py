"""A real SMTP receiver for the outbound tests: aiosmtpd (Debian
python3-aiosmtpd) stands in for the smarthost or a remote MX, and dkimpy
(python3-dkim) verifies the DKIM signatures of what arrives.

usage: smtp_receiver.py DIR [PORT]

DIR/port     written once listening (the chosen port)
DIR/rules    optional, re-read on every command: lines `ADDRESS CODE [TIMES]`
             answer RCPT for ADDRESS with CODE (e.g. 450, 550) the first
             TIMES times (default: always), then accept
DIR/dns      optional: lines `NAME TXT-VALUE` for DKIM key lookups
DIR/msg-N.json  each received message: envelope, raw (base64), and the
             DKIM verdict of every signature (`dkim`: list of
             {selector, algorithm, ok})
"""

import base64
import json
import os
import re
import sys
import threading

from aiosmtpd.controller import Controller

try:
    import dkim  # dkimpy
except ImportError:  # pragma: no cover - the test reports it
    dkim = None

DIR = sys.argv[1]
PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 0
lock = threading.Lock()
counts = {}
seq = [0]


def rules():
    out = {}
    try:
        with open(os.path.join(DIR, "rules")) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    times = int(parts[2]) if len(parts) > 2 else None
                    out[parts[0].lower()] = (int(parts[1]), times)
    except FileNotFoundError:
        pass
    return out


def dns_records():
    out = {}
    try:
        with open(os.path.join(DIR, "dns")) as f:
            for line in f:
                name, _, value = line.strip().partition(" ")
                if name:
                    out[name.rstrip(".").lower()] = value
    except FileNotFoundError:
        pass
    return out


def verify_all(raw):
    """Verify each DKIM-Signature separately (dkimpy checks one by index)."""
    if dkim is None:
        return [{"error": "dkimpy missing"}]
    records = dns_records()

    def dnsfunc(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        value = records.get(key.rstrip(".").lower())
        return value.encode() if value else None

    results = []
    head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")
    sigs = [l for l in head.split(b"\r\n") if l.lower().startswith(b"dkim-signature:")]
    for idx, line in enumerate(sigs):
        tags = dict(
            (k.strip().decode(), v.strip().decode())
            for k, _, v in (t.partition(b"=") for t in line.split(b":", 1)[1].split(b";"))
            if k.strip()
        )
        d = dkim.DKIM(raw)
        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
            err = None
        except Exception as e:  # noqa: BLE001 - report, don't crash
            ok, err = False, repr(e)
        results.append({"selector": tags.get("s", ""), "algorithm": tags.get("a", ""), "ok": bool(ok), "error": err})
    return results


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        rule = rules().get(address.lower())
        if rule:
            code, times = rule
            with lock:
                n = counts.get(address.lower(), 0)
                counts[address.lower()] = n + 1
            if times is None or n < times:
                if code >= 500:
                    return f"{code} 5.1.1 <{address}>: rejected by test rule"
                return f"{code} 4.2.0 <{address}>: try again later (test rule)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        with lock:
            seq[0] += 1
            n = seq[0]
        doc = {
            "mail_from": envelope.mail_from,
            "rcpt_to": envelope.rcpt_tos,
            "raw": base64.b64encode(raw).decode(),
            "dkim": verify_all(raw),
        }
        tmp = os.path.join(DIR, f".msg-{n}.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, os.path.join(DIR, f"msg-{n}.json"))
        return "250 2.0.0 queued as test-%d" % n


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    os.makedirs(DIR, exist_ok=True)
    port = PORT or free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, decode_data=False,
                            data_size_limit=200 * 1024 * 1024)
    controller.start()
    with open(os.path.join(DIR, ".port.tmp"), "w") as f:
        f.write(str(port))
    os.replace(os.path.join(DIR, ".port.tmp"), os.path.join(DIR, "port"))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
