"""The local cloud (``jhub-broker cloud``) as a subprocess, for the benchmarks (which must not import tests)."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import yaml


class Cloud:
    def __init__(self, state_dir, config):
        self.state_dir = state_dir
        with open(os.path.join(state_dir, "cloud.yaml"), "w") as f:
            yaml.safe_dump(config, f)
        self.log = open(os.path.join(state_dir, "cloud.log"), "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "jhub_broker.cli", "--log-level", "WARNING", "cloud",
                                      "--state-dir", state_dir, "--host", "127.0.0.1", "--port", "0",
                                      "--config", os.path.join(state_dir, "cloud.yaml")],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        endpoint = os.path.join(state_dir, "endpoint")
        while not (os.path.exists(endpoint) and os.path.exists(os.path.join(state_dir, "clouds.yaml"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit("the local cloud did not start; see " + os.path.join(state_dir, "cloud.log"))
            time.sleep(0.05)
        time.sleep(0.2)
        with open(endpoint) as f:
            self.base_url = f.read().strip()
        with open(os.path.join(state_dir, "admin-secret")) as f:
            self._admin_secret = f.read().strip()
        self.clouds_yaml = os.path.join(state_dir, "clouds.yaml")
        with open(self.clouds_yaml) as f:
            self.entry = yaml.safe_load(f)["clouds"]["local"]

    def connect_kwargs(self):
        e = self.entry
        return dict(load_yaml_config=False, load_envvars=False, auth_type=e["auth_type"], auth=dict(e["auth"]),
                    region_name=e["region_name"])

    def connect(self):
        import openstack
        return openstack.connect(**self.connect_kwargs())

    def admin(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"X-Emulator-Admin": self._admin_secret,
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def clear_log(self):
        self.admin("DELETE", "/_emulator/requests")

    def requests(self):
        return self.admin("GET", "/_emulator/requests")["requests"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
