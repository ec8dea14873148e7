#!/usr/bin/python3
"""A real SMTP server for the mail tests (aiosmtpd, Debian's python3-aiosmtpd).

Usage: smtp_sink.py PORT   (0 picks a free port)

Prints `listening on PORT` once bound, then one JSON line per message received:
{"mail_from", "rcpt_tos", "subject", "body"}. Runs until killed.
"""
import asyncio
import email
import email.policy
import json
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "subject": str(msg["subject"]),
            "to": str(msg["to"]),
            "body": body.get_content() if body is not None else "",
        }), flush=True)
        return "250 OK"


async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink()), "127.0.0.1", port)
    print("listening on", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
