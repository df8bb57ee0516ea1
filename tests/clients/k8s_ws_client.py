#!/usr/bin/env python3
"""Drives a crius streaming URL with the WebSocket client of the Python
`kubernetes` package (an implementation we did not write), and prints what
it saw as one JSON object on stdout.

  exec URL [--stdin TEXT] [--close-stdin] [--resize WxH] [--protocol P]
      -> {"stdout": ..., "stderr": ..., "returncode": N, "subprotocol": P}
  portforward URL PORT SEND
      -> {"received": ...}

With an https:// URL the server's certificate is verified against --ca
(a PEM file), hostname included.
"""
import argparse
import json
import sys
import time

from kubernetes.client import Configuration
from kubernetes.stream import ws_client


def configuration(args):
    config = Configuration()
    if args.ca:
        config.ssl_ca_cert = args.ca
        config.verify_ssl = True
    return config


def run_exec(args):
    config = configuration(args)
    headers = {}
    if args.protocol:
        headers["sec-websocket-protocol"] = args.protocol
    url = ws_client.get_websocket_url(args.url)
    client = ws_client.WSClient(config, url, headers, capture_all=True, binary=False)
    if args.resize:
        width, height = (int(v) for v in args.resize.split("x"))
        client.write_channel(
            ws_client.RESIZE_CHANNEL, json.dumps({"Width": width, "Height": height})
        )
        # Let the resize reach the terminal before the command reads stdin.
        time.sleep(0.3)
    if args.stdin is not None:
        client.write_stdin(args.stdin)
    if args.close_stdin:
        client.close_channel(ws_client.STDIN_CHANNEL)
    stdout, stderr = [], []
    deadline = time.time() + args.timeout
    while client.is_open() and time.time() < deadline:
        client.update(timeout=1)
        if client.peek_stdout():
            stdout.append(client.read_stdout())
        if client.peek_stderr():
            stderr.append(client.read_stderr())
    stdout.append(client.read_stdout(timeout=0) or "")
    stderr.append(client.read_stderr(timeout=0) or "")
    result = {
        "stdout": "".join(stdout),
        "stderr": "".join(stderr),
        "returncode": client.returncode,
        "subprotocol": client.subprotocol,
        "timed_out": client.is_open(),
    }
    print(json.dumps(result))


def run_portforward(args):
    config = configuration(args)
    url = args.url + ("&" if "?" in args.url else "?") + "ports=%d" % args.port
    forward = ws_client.portforward_call(config, "GET", url, _preload_content=False)
    sock = forward.socket(args.port)
    sock.settimeout(args.timeout)
    sock.sendall(args.send.encode())
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    error = forward.error(args.port)
    print(json.dumps({"received": received.decode(errors="replace"), "error": error}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    ex = sub.add_parser("exec")
    ex.add_argument("url")
    ex.add_argument("--stdin")
    ex.add_argument("--close-stdin", action="store_true")
    ex.add_argument("--resize")
    ex.add_argument("--protocol")
    ex.add_argument("--timeout", type=float, default=20)
    ex.add_argument("--ca")
    pf = sub.add_parser("portforward")
    pf.add_argument("url")
    pf.add_argument("port", type=int)
    pf.add_argument("send")
    pf.add_argument("--timeout", type=float, default=20)
    pf.add_argument("--ca")
    args = parser.parse_args()
    if args.mode == "exec":
        run_exec(args)
    else:
        run_portforward(args)


if __name__ == "__main__":
    sys.exit(main())
