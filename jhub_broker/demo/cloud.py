"""The demo's local OpenStack cloud: started as ``jhub-broker cloud`` in a subprocess.

    proc, clouds_yaml, base_url = start_demo_cloud(state_dir)
    print_cli_help(clouds_yaml)
    ...
    stop_demo_cloud(proc)
"""
import atexit
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import yaml

CLOUD_NAME = "local"


class CloudStartError(RuntimeError):
    """The local cloud process did not come up; the message ends with its log."""


def _log_tail(path, chars=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def _answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_demo_cloud(state_dir, host="127.0.0.1", port=0, config=None, timeout=60):
    """Start the local cloud in a subprocess and wait until Keystone answers.

    ``port=0`` lets the cloud bind a free port itself (no race); the real
    address is read back from ``<state_dir>/endpoint``.  ``config`` is an
    optional cloud config YAML path.  Returns ``(process, clouds_yaml_path,
    base_url)``; the process is stopped at interpreter exit if the caller has
    not stopped it (``stop_demo_cloud``).
    """
    state_dir = os.path.abspath(os.path.expanduser(state_dir))
    os.makedirs(state_dir, exist_ok=True)
    endpoint = os.path.join(state_dir, "endpoint")
    clouds_yaml = os.path.join(state_dir, "clouds.yaml")
    for stale in (endpoint, clouds_yaml):  # left by an earlier run: not this cloud's
        if os.path.exists(stale):
            os.unlink(stale)
    log_path = os.path.join(state_dir, "cloud.log")
    cmd = [sys.executable, "-m", "jhub_broker.cli", "cloud", "--state-dir", state_dir,
           "--host", host, "--port", str(port)]
    if config:
        cmd += ["--config", os.path.abspath(config)]
    os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(log_path, 0o600)
    with open(log_path, "ab") as log:
        # own session: a Ctrl-C in the terminal reaches the demo, which then stops the cloud
        # (VMs are torn down by the cloud on SIGTERM)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    atexit.register(stop_demo_cloud, proc)

    deadline = time.monotonic() + timeout
    base_url = None
    while True:
        if proc.poll() is not None:
            raise CloudStartError(f"the local cloud exited with status {proc.returncode}; "
                                  f"{log_path}:\n{_log_tail(log_path)}")
        if base_url is None and os.path.exists(endpoint):
            with open(endpoint) as f:
                base_url = f.read().strip() or None
        if base_url and os.path.exists(clouds_yaml) and _answers(base_url + "/identity/v3"):
            return proc, clouds_yaml, base_url
        if time.monotonic() > deadline:
            stop_demo_cloud(proc)
            raise CloudStartError(f"the local cloud did not answer within {timeout}s; "
                                  f"{log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.1)


def stop_demo_cloud(proc, timeout=20):
    """SIGTERM the cloud (it stops its VMs), SIGKILL its process group if it hangs."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.wait()


def print_cli_help(clouds_yaml, base_url=None, file=None):
    """Tell the user how to drive the local cloud with the ``openstack`` CLI."""
    file = file or sys.stdout
    env = f"OS_CLIENT_CONFIG_FILE={shlex.quote(os.path.abspath(clouds_yaml))}"
    try:
        with open(clouds_yaml) as f:
            names = ", ".join(yaml.safe_load(f)["clouds"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        names = CLOUD_NAME
    lines = ["", "Local OpenStack cloud" + (f" at {base_url}" if base_url else "") + " is running.",
             f"clouds.yaml: {clouds_yaml}  (clouds: {names})",
             "", "Use it with the openstack CLI, e.g. in another terminal:",
             f"  export {env}",
             f"  openstack --os-cloud {CLOUD_NAME} server list",
             f"  openstack --os-cloud {CLOUD_NAME} image list",
             f"  openstack --os-cloud {CLOUD_NAME} server create --image ubuntu-24.04 --flavor m1.small "
             "--network private --user-data my-script.sh --wait my-vm",
             f"  openstack --os-cloud {CLOUD_NAME} console log show my-vm",
             "or in one line:",
             f"  {env} openstack --os-cloud {CLOUD_NAME} server list",
             "", "Servers really run their user_data, sandboxed, on their own 127.x address.",
             "See docs/local-cloud.md for what the cloud implements and its fault controls.", ""]
    print("\n".join(lines), file=file, flush=True)
