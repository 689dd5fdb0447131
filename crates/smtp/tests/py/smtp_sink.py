#!/usr/bin/env python3
"""A scriptable SMTP receiver (aiosmtpd) for agentpost's outbound delivery tests.

Usage: smtp_sink.py CONFIG_JSON

CONFIG_JSON keys (all optional except "dir"):
  dir               directory where each accepted message is written as
                    msg-NNNN.json, and every command is logged to commands.log
  host, port        where to listen (127.0.0.1, 0 = any free port)
  hostname          name in the greeting and EHLO reply
  rcpt              {"address": "450 4.2.1 busy", ...}: replies for RCPT TO
  data_reply        reply after the end of data instead of 250 (message not saved)
  tls_cert, tls_key PEM files: offer STARTTLS with this certificate
  require_starttls  refuse MAIL before STARTTLS
  auth_user, auth_password
                    require AUTH (PLAIN/LOGIN) with these credentials
  auth_require_tls  refuse AUTH before STARTTLS (default true)

Prints "READY <port>" on stdout once listening; exits when stdin closes.
Saved message JSON: mail_from, rcpt_tos, mail_options, data_b64 (the message
as received, dot-stuffing undone), tls (bool), auth_user, helo.
"""

import asyncio
import base64
import itertools
import json
import os
import ssl
import sys

try:
    from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
except ImportError:
    print("MISSING aiosmtpd: install python3-aiosmtpd (Debian) or `python3 -m pip install aiosmtpd`",
          flush=True)
    sys.exit(3)


class Sink:
    def __init__(self, cfg):
        self.cfg = cfg
        self.dir = cfg["dir"]
        self.rcpt = {k.lower(): v for k, v in cfg.get("rcpt", {}).items()}
        self.counter = itertools.count(1)

    def log(self, line):
        with open(os.path.join(self.dir, "commands.log"), "a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.rcpt.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.cfg.get("data_reply"):
            return self.cfg["data_reply"]
        n = next(self.counter)
        auth_user = None
        if session.authenticated and session.auth_data is not None:
            auth_user = session.auth_data
            if isinstance(auth_user, bytes):
                auth_user = auth_user.decode("utf-8", "replace")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "data_b64": base64.b64encode(envelope.original_content).decode("ascii"),
            "tls": session.ssl is not None,
            "auth_user": auth_user,
            "helo": session.host_name,
        }
        path = os.path.join(self.dir, "msg-%04d.json" % n)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
        return "250 2.0.0 queued as %d" % n

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        if (isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == self.cfg.get("auth_user")
                and auth_data.password.decode() == self.cfg.get("auth_password")):
            return AuthResult(success=True, auth_data=auth_data.login)
        return AuthResult(success=False, handled=False)


def make_protocol_class(sink):
    class LoggingSMTP(SMTP):
        """Logs each command (verb and argument) to commands.log."""

        async def smtp_EHLO(self, arg):
            sink.log("EHLO %s" % arg)
            await super().smtp_EHLO(arg)

        async def smtp_HELO(self, arg):
            sink.log("HELO %s" % arg)
            await super().smtp_HELO(arg)

        async def smtp_STARTTLS(self, arg):
            sink.log("STARTTLS")
            await super().smtp_STARTTLS(arg)

        async def smtp_AUTH(self, arg):
            sink.log("AUTH %s" % (arg or "").split(" ")[0])
            await super().smtp_AUTH(arg)

        async def smtp_MAIL(self, arg):
            sink.log("MAIL %s" % arg)
            await super().smtp_MAIL(arg)

        async def smtp_RCPT(self, arg):
            sink.log("RCPT %s" % arg)
            await super().smtp_RCPT(arg)

        async def smtp_DATA(self, arg):
            sink.log("DATA")
            await super().smtp_DATA(arg)

        async def smtp_QUIT(self, arg):
            sink.log("QUIT")
            await super().smtp_QUIT(arg)

    return LoggingSMTP


async def main():
    cfg = json.loads(sys.argv[1])
    sink = Sink(cfg)
    tls_context = None
    if cfg.get("tls_cert"):
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(cfg["tls_cert"], cfg["tls_key"])
    auth = cfg.get("auth_user") is not None
    protocol = make_protocol_class(sink)

    def factory():
        return protocol(
            sink,
            hostname=cfg.get("hostname", "sink.test"),
            tls_context=tls_context,
            require_starttls=cfg.get("require_starttls", False),
            authenticator=sink.authenticator if auth else None,
            auth_required=auth,
            auth_require_tls=cfg.get("auth_require_tls", True),
            enable_SMTPUTF8=True,
            decode_data=False,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, host=cfg.get("host", "127.0.0.1"),
                                      port=cfg.get("port", 0))
    port = server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    # Run until the test closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
