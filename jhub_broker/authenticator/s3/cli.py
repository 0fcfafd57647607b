"""``jhub-broker-s3-credentials``: AWS credential_process helper asking the hub for renewed credentials.

``--profile X`` prints credential_process JSON. ``--write-config`` writes $JHUB_BROKER_AWS_CONFIG
to $AWS_CONFIG_FILE (run at server start; extra args are then exec'd).
"""
import argparse
import json
import os
import sys
import urllib.request


def fetch(profile):
    url = os.environ["JHUB_BROKER_S3_API"].rstrip("/") + "/" + profile
    req = urllib.request.Request(url, headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def main(argv=None):
    p = argparse.ArgumentParser(prog="jhub-broker-s3-credentials")
    p.add_argument("--profile", default="default")
    p.add_argument("--write-config", action="store_true")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    if a.write_config:
        path = os.environ.get("AWS_CONFIG_FILE")
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(os.environ.get("JHUB_BROKER_AWS_CONFIG", ""))
        cmd = [c for c in a.command if c != "--"]
        if cmd:
            os.execvp(cmd[0], cmd)
        return 0
    try:
        data = fetch(a.profile)
    except Exception as e:  # noqa: BLE001
        print(f"jhub-broker-s3-credentials: {type(e).__name__}: {getattr(e, 'code', '')}", file=sys.stderr)
        return 1
    data.pop("Token", None)
    json.dump(data, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
