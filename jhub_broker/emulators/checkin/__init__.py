"""Launch the Check-in stand-in (npm ``oidc-provider``) as a subprocess on loopback.

Config (JSON handed to ``provider.mjs``)::

    {"host": "127.0.0.1", "port": 0, "path": "/auth/realms/egi",
     "accounts_file": ".../accounts.json",
     "clients": [{"client_id": ..., "client_secret": ..., "redirect_uris": [...],
                  "grant_types"?: [...], "response_types"?: [...]}],   (default: code + refresh_token)
     "ttl": {"access_token": 3600, "refresh_token": 86400}}

Accounts (``accounts_file``): ``{"accounts": [{"username", "password", "sub", "name", "email", "entitlements",
"groups"?}]}``; ``groups`` becomes a ``groups`` claim (profile scope). As Check-in does, every authorization
request must carry a PKCE ``code_challenge`` (S256 only): one without is sent back with ``invalid_request``.
"""
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

from ..process import stop_process

HERE = os.path.dirname(os.path.abspath(__file__))
ACCOUNTS_FILE = os.path.join(HERE, "accounts.json")


def default_node_modules():
    """``share/node/node_modules`` of a source checkout, or $JHUB_BROKER_NODE_MODULES."""
    env = os.environ.get("JHUB_BROKER_NODE_MODULES")
    if env:
        return env
    return os.path.normpath(os.path.join(HERE, "..", "..", "..", "share", "node", "node_modules"))


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class CheckinStandIn:
    def __init__(self, clients, state_dir, host="127.0.0.1", port=0, accounts_file=ACCOUNTS_FILE,
                 ttl=None, node="node", node_modules=None, path="/auth/realms/egi"):
        self.host, self.port = host, port or free_port(host)
        self.path = path
        self.state_dir = state_dir
        self.config = {"host": host, "port": self.port, "path": path, "accounts_file": accounts_file,
                       "clients": clients, "ttl": ttl or {},
                       "node_modules": node_modules or default_node_modules()}
        self.node = shutil.which(node) or node
        self.proc = None

    @property
    def issuer(self):
        return f"http://{self.host}:{self.port}{self.path}"

    def start(self, timeout=30):
        os.makedirs(self.state_dir, exist_ok=True)
        cfg = os.path.join(self.state_dir, "checkin.json")
        with open(cfg, "w") as f:
            json.dump(self.config, f)
        self.log_path = os.path.join(self.state_dir, "checkin.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.node, os.path.join(HERE, "provider.mjs"), "--config", cfg],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        url = self.issuer + "/.well-known/openid-configuration"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    self.discovery = json.load(r)
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    with open(self.log_path) as f:
                        raise RuntimeError("Check-in stand-in did not start:\n" + f.read()[-3000:])
                time.sleep(0.1)

    def stop(self):
        stop_process(self.proc)
