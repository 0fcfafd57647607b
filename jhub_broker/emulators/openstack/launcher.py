"""The local cloud as a ``jhub-broker cloud`` subprocess, and the ways to talk to it.

Shared by the tests' fixtures and the benchmarks (which must not import tests)::

    cloud = start_cloud_process(state_dir, config={"boot_delay": 0.5})
    conn = cloud.connect()
    ...
    cloud.stop()
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import yaml

from ..process import stop_process


class RunningCloud:
    """A ``jhub-broker cloud`` process and the ways to talk to it."""

    def __init__(self, state_dir, proc, config=None):
        self.state_dir = state_dir
        self.proc = proc
        config = config or {}
        # "127.x.y." prefixes of the default private network and of the floating IP pool
        self.fixed_prefix = config.get("default_network", {}).get("cidr", "127.42.0.0/24").rsplit(".", 1)[0] + "."
        self.floating_prefix = config.get("external_network", {}).get("cidr", "127.43.0.0/24").rsplit(".", 1)[0] + "."
        self.clouds_yaml = os.path.join(state_dir, "clouds.yaml")
        with open(os.path.join(state_dir, "endpoint")) as f:
            self.base_url = f.read().strip()
        with open(os.path.join(state_dir, "admin-secret")) as f:
            self.admin_secret = f.read().strip()
        with open(self.clouds_yaml) as f:
            self.clouds = yaml.safe_load(f)["clouds"]

    def connect_kwargs(self, name="local"):
        """``openstack.connect`` arguments for the cloud ``name`` of clouds.yaml, with no env guessing."""
        entry = self.clouds[name]
        return dict(load_yaml_config=False, load_envvars=False, auth_type=entry["auth_type"],
                    auth=dict(entry["auth"]), region_name=entry["region_name"])

    def connect(self, name="local", **kwargs):
        """A real openstacksdk connection, with no clouds.yaml or env guessing."""
        import openstack
        return openstack.connect(**self.connect_kwargs(name), **kwargs)

    def cli(self, *args, cloud="local", check=True, json_output=True):
        """Run the real ``openstack`` CLI against this cloud."""
        env = dict(os.environ, OS_CLIENT_CONFIG_FILE=self.clouds_yaml)
        for k in list(env):
            if k.startswith("OS_") and k != "OS_CLIENT_CONFIG_FILE":
                del env[k]
        cmd = [shutil.which("openstack") or "openstack", "--os-cloud", cloud, *args]
        if json_output:
            cmd += ["-f", "json"]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
        if json_output and res.returncode == 0 and res.stdout.strip():
            return json.loads(res.stdout)
        return res

    def admin(self, method, path, body=None, timeout=30):
        """Call an ``/_emulator`` control endpoint."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"X-Emulator-Admin": self.admin_secret,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def clear_requests(self):
        """Empty the cloud's log of API requests (``/_emulator`` controls are not logged)."""
        self.admin("DELETE", "/_emulator/requests")

    def requests(self):
        """The API requests the cloud answered since the last ``clear_requests``."""
        return self.admin("GET", "/_emulator/requests")["requests"]

    def stop(self):
        """SIGTERM (the cloud stops its VMs), SIGKILL if it has not exited after 20 s."""
        stop_process(self.proc, timeout=20)


def start_cloud_process(state_dir, config=None, port=0, log_level=None, timeout=30):
    """Start ``jhub-broker cloud`` on loopback with ``config`` (a dict, written to ``<state_dir>/cloud.yaml``)
    and wait until it has written its endpoint; raises RuntimeError with the end of its log if it does not."""
    os.makedirs(state_dir, exist_ok=True)
    if config is not None:
        with open(os.path.join(state_dir, "cloud.yaml"), "w") as f:
            yaml.safe_dump(config, f)
    endpoint = os.path.join(state_dir, "endpoint")
    for name in (endpoint, os.path.join(state_dir, "clouds.yaml")):  # left by an earlier run: not this cloud's
        if os.path.exists(name):
            os.unlink(name)
    log_path = os.path.join(state_dir, "cloud.log")
    cmd = [sys.executable, "-m", "jhub_broker.cli"] + (["--log-level", log_level] if log_level else []) + \
        ["cloud", "--state-dir", state_dir, "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    # the endpoint file is written last, after clouds.yaml and admin-secret
    while not (os.path.exists(endpoint) and os.path.getsize(endpoint)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            with open(log_path, errors="replace") as f:
                raise RuntimeError("local cloud did not start:\n" + f.read()[-3000:])
        time.sleep(0.05)
    return RunningCloud(state_dir, proc, config)
