"""Run the Check-in stand-in for the demo: ``python -m jhub_broker.emulators.checkin --redirect-uri ...``."""
import argparse
import signal
import tempfile

from . import ACCOUNTS_FILE, CheckinStandIn


def main(argv=None):
    p = argparse.ArgumentParser(description="EGI Check-in stand-in (npm oidc-provider) on loopback")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--client-id", default="jupyterhub-demo")
    p.add_argument("--client-secret", required=True)
    p.add_argument("--redirect-uri", action="append", required=True)
    p.add_argument("--accounts", default=ACCOUNTS_FILE, help="JSON accounts file (default: ready-made researchers)")
    p.add_argument("--state-dir", default=None)
    a = p.parse_args(argv)
    s = CheckinStandIn([{"client_id": a.client_id, "client_secret": a.client_secret, "redirect_uris": a.redirect_uri}],
                       a.state_dir or tempfile.mkdtemp(prefix="checkin-"), port=a.port, accounts_file=a.accounts)
    s.start()
    print(f"issuer {s.issuer}  (accounts: {a.accounts})", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        s.stop()


if __name__ == "__main__":
    main()
