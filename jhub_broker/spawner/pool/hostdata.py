"""cloud-init user_data of a pool host: the host agent and where to redeem its bootstrap secret, nothing else.

The secret is worthless once redeemed; the TLS key of the host's dockerd travels only in the bootstrap
answer (see host_agent.py).
"""
import json
import os

import yaml

from ..userdata import gz_b64

AGENT_SRC = os.path.join(os.path.dirname(__file__), "host_agent.py")
AGENT_PATH = "/var/lib/jhub-broker/host_agent.py"  # /usr may be read-only (a pre-baked image)
CONFIG_PATH = "/etc/jhub-broker/pool-host.json"


def render(bootstrap_url, secret, redeem_timeout):
    with open(AGENT_SRC) as f:
        agent = f.read()
    config = {"url": bootstrap_url, "secret": secret, "redeem_timeout": redeem_timeout}
    doc = {
        "write_files": [
            {"path": AGENT_PATH, "encoding": "gz+b64", "content": gz_b64(agent), "permissions": "0755"},
            {"path": CONFIG_PATH, "content": json.dumps(config), "permissions": "0600"},
        ],
        "runcmd": [["python3", AGENT_PATH]],
    }
    return "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)
