"""Run in the POWER guest: ``kvmppc serve`` on the guest's real KVM, asked through its socket.

The daemon runs as a subprocess with its notifications on a datagram socket, as under
systemd.  Prints JSON {"notifications": [...], "host": ..., "health": ..., "check_64k": ...,
"check_16m": ..., "metrics": "...", "exit": N, "log": "..."}; tests/test_daemon_powerguest.py
compares the answers with the guest's own probe and the policy run on the host.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from kvmppc.daemon.client import DaemonClient

SOCKET = "/tmp/kvmppc.sock"
NOTIFY = "/tmp/kvmppc-notify.sock"
LOG = "/tmp/kvmppc-daemon.log"


def main() -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(NOTIFY)
    notify.settimeout(120)
    log = open(LOG, "wb")  # noqa: SIM115 - the daemon's stderr for its whole life
    daemon = subprocess.Popen(
        [sys.executable, "-m", "kvmppc", "serve", "--socket", SOCKET, "--metrics-address", "",
         "--log-level", "info"],
        env={**os.environ, "NOTIFY_SOCKET": NOTIFY}, stderr=log,
    )
    notes: list[list[str]] = []

    def wait_for(assignment: str) -> None:
        while not notes or assignment not in notes[-1]:
            notes.append(notify.recv(4096).decode().split("\n"))

    wait_for("READY=1")
    with DaemonClient(SOCKET) as client:
        def ask(path: str, **params: str) -> object:
            return client.request("GET", path, params)[1]

        out = {
            "host": ask("/v1/host"),
            "health": ask("/v1/health"),
            "check_64k": ask("/v1/check", max_page_size="64k"),
            "check_16m": ask("/v1/check", max_page_size="16M"),
            "metrics": ask("/metrics"),
        }
    daemon.send_signal(signal.SIGHUP)
    wait_for("RELOADING=1")
    wait_for("READY=1")
    daemon.send_signal(signal.SIGTERM)
    wait_for("STOPPING=1")
    out["exit"] = daemon.wait(60)
    out["notifications"] = notes
    log.close()
    with open(LOG, encoding="utf-8", errors="replace") as handle:
        out["log"] = handle.read()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
