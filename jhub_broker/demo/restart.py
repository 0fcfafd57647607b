"""The demo's hub restart command (the broker's ``restart_command`` in the demo's config).

    python -m jhub_broker.demo.restart STATE_DIR

The demo supervisor (``jhub-broker demo``) owns the hub process, so a restart is asked of it: this command drops
a request file into ``STATE_DIR/restart-requests``, wakes the supervisor with SIGUSR1 and waits until the
supervisor has stopped the old hub, launched the new one and seen it serve or fail (like ``systemctl restart`` of
a notify unit). The broker's restart helper still checks the hub API itself, and rolls back if it is not back.
Exit status: 0 when the new hub serves, 1 otherwise (with the reason on stderr).
"""
import os
import secrets
import signal
import sys
import time

REQUESTS = "restart-requests"
PID_FILE = "demo.pid"


def request_restart(state_dir, timeout=180):
    d = os.path.join(state_dir, REQUESTS)
    try:
        with open(os.path.join(state_dir, PID_FILE)) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return 1, f"no running demo in {state_dir} (no {PID_FILE})"
    os.makedirs(d, exist_ok=True)
    nonce = secrets.token_hex(8)
    with open(os.path.join(d, nonce), "w"):
        pass
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        os.unlink(os.path.join(d, nonce))
        return 1, f"the demo (pid {pid}) is not running"
    done = os.path.join(d, nonce + ".done")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(done):
            with open(done) as f:
                result = f.read().strip()
            os.unlink(done)
            return (0, result) if result == "ok" else (1, result)
        time.sleep(0.2)
    return 1, f"the demo did not restart the hub within {timeout}s"


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m jhub_broker.demo.restart STATE_DIR", file=sys.stderr)
        return 2
    code, message = request_restart(os.path.abspath(args[0]))
    print(message, file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
