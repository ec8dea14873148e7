#!/usr/bin/env python3
"""A product wrapper for the Flex licensing agent, in Python (standard library only).

    flex-wrap.py --product autocad [--version 2026] [--socket PATH] -- /opt/autocad/acad FILE...

Asks flex-agent for a license, starts the product only when granted, tells the
agent its pid, stays connected while it runs, reports its exit, and closes it
when the agent says so. Exit code: the product's (128 + N if signal N ended it),
or 77 when the license was refused and the product never started.

The protocol is described in docs/local-api.md. Unix only (the agent's socket);
on Windows see flex-wrap.ps1.
"""

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

PROTOCOL = 1
MAX_LINE = 64 * 1024
EXIT_REFUSED = 77
# macOS has no /run: its agent listens under /var/run (docs/local-api.md).
DEFAULT_SOCKET = os.environ.get(
    "FLEX_AGENT_SOCKET",
    "/var/run/flex-agent/agent.sock" if sys.platform == "darwin" else "/run/flex-agent/agent.sock",
)


class Agent:
    """One connection to flex-agent: request lines out, reply and event lines in."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.buf = b""
        self.events = []  # events that arrived while waiting for a reply

    def send(self, request):
        line = json.dumps(request, separators=(",", ":")).encode() + b"\n"
        self.sock.sendall(line)

    def read_line(self):
        """The next line from the agent as a dict, or None when it hung up."""
        while b"\n" not in self.buf:
            if len(self.buf) >= MAX_LINE:
                raise ValueError("the agent sent a line over 64 KiB")
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        if not line.strip():
            return self.read_line()
        return json.loads(line)

    def call(self, request):
        """Sends a request and returns its reply; events before it are kept."""
        self.send(request)
        while True:
            line = self.read_line()
            if line is None:
                raise ConnectionError("flex-agent closed the connection")
            if "event" in line:
                self.events.append(line)
            else:
                return line


def product_label(message, fallback):
    """What people call the product: its display name, else its id."""
    return (message.get("product_name") or "").strip() or fallback


def main():
    parser = argparse.ArgumentParser(description="Run a product under a Flex license.")
    parser.add_argument("--product", required=True, help="product id on the rate sheet, e.g. autocad")
    parser.add_argument("--version", help="product version, for usage reports")
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="flex-agent's socket")
    parser.add_argument("command", nargs="+", help="the product's command line (after --)")
    args = parser.parse_args()

    try:
        agent = Agent(args.socket)
        hello = agent.call({"op": "hello", "protocol": PROTOCOL, "client": "flex-wrap.py"})
        if not hello.get("ok"):
            raise ConnectionError(hello["error"]["message"])
        launch = {"op": "launch", "product": args.product}
        if args.version:
            launch["version"] = args.version
        grant = agent.call(launch)
    except (OSError, ValueError) as e:
        print(f"flex-wrap: {args.product} not started: cannot ask flex-agent at "
              f"{args.socket} ({e}); is the service running?", file=sys.stderr)
        return EXIT_REFUSED

    name = product_label(grant, args.product)
    if not grant.get("ok"):
        error = grant["error"]
        print(f"flex-wrap: {name} not started: {error['message']} ({error['code']})", file=sys.stderr)
        return EXIT_REFUSED

    session = grant["session"]
    grace = grant.get("close_grace_secs") or 30
    try:
        product = subprocess.Popen(args.command)
    except OSError as e:
        agent.call({"op": "exit", "session": session})
        print(f"flex-wrap: cannot start {args.command[0]}: {e}", file=sys.stderr)
        return 127
    agent.send({"op": "attach", "session": session, "pid": product.pid})

    # Signals to the wrapper go to the product (a user closing the launcher).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _f: product.send_signal(n))

    # The product's exit wakes the loop below through a pipe.
    exited_r, exited_w = os.pipe()
    threading.Thread(target=lambda: (product.wait(), os.write(exited_w, b"x")), daemon=True).start()

    sel = selectors.DefaultSelector()
    sel.register(exited_r, selectors.EVENT_READ)
    sel.register(agent.sock, selectors.EVENT_READ)
    pending = list(agent.events)
    awaiting = 1  # the attach reply
    kill_at = None
    connected = True
    while product.poll() is None:
        for event in pending:
            if event.get("event") == "product_closed" and kill_at is None:
                print(f"flex-wrap: flex-agent closed {product_label(event, name)}: "
                      f"{event['message'].rstrip('.')}", file=sys.stderr)
                product.terminate()
                kill_at = time.monotonic() + grace
        pending = []
        timeout = None if kill_at is None else max(0.0, kill_at - time.monotonic())
        ready = sel.select(timeout)
        if kill_at is not None and time.monotonic() >= kill_at and product.poll() is None:
            product.kill()
        for key, _ in ready:
            if key.fileobj is agent.sock and connected:
                line = agent.read_line()
                while line is not None:
                    if "event" in line:
                        pending.append(line)
                    else:
                        awaiting -= 1
                        if not line.get("ok"):
                            print(f"flex-wrap: flex-agent: {line['error']['message']}", file=sys.stderr)
                    if b"\n" not in agent.buf:
                        break
                    line = agent.read_line()
                if line is None:
                    # The agent went away (restart): the product keeps running.
                    sel.unregister(agent.sock)
                    connected = False
    code = product.wait()
    exit_code = code if code >= 0 else 128 - code

    report = {"op": "exit", "session": session, "code": exit_code}
    try:
        if connected:
            while awaiting > 0:
                line = agent.read_line()
                if line is None:
                    break
                if "event" not in line:
                    awaiting -= 1
        else:
            agent = Agent(args.socket)
            agent.call({"op": "hello", "protocol": PROTOCOL, "client": "flex-wrap.py"})
        agent.call(report)
    except (OSError, ValueError):
        pass  # the agent sees the process end by itself
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
