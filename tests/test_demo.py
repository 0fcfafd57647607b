"""The README's demo command, run for real: ``jhub-broker demo`` in a subprocess.

A researcher logs in through the Check-in stand-in (browser-style redirects), starts a server with the
spawn form (a VM in the local cloud), reaches the notebook through the hub's proxy; then the demo is
stopped with SIGINT (Ctrl-C) and no process of it may survive.
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urljoin, urlparse

import pytest
import requests

from jhub_broker.emulators.checkin import default_node_modules

NODE_BIN = os.path.join(default_node_modules(), ".bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_hub(base, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the demo exited with {proc.returncode}"
        try:
            if requests.get(base + "/hub/api/", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("the demo's hub did not answer")


def login(base, username, password):
    """What a browser does: /hub/login -> Check-in stand-in form -> post -> back at the hub."""
    s = requests.Session()
    r = s.get(base + "/hub/login", params={"next": "/hub/home"}, timeout=30)
    r.raise_for_status()
    assert urlparse(r.url).port != urlparse(base).port, f"/hub/login did not go to the stand-in: {r.url}"
    assert "/auth/realms/egi/" in r.url
    m = re.search(r'<form method="post" action="([^"]+)"', r.text)
    assert m, f"no login form at {r.url}:\n{r.text[:500]}"
    r = s.post(urljoin(r.url, m.group(1)), data={"username": username, "password": password}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert r.url == base + "/hub/home", r.url
    return s


def spawn_with_form(s, base, flavor="m1.small"):
    r = s.get(base + "/hub/spawn", timeout=30)
    assert r.status_code == 200, r.text[:500]
    assert 'name="flavor"' in r.text, "the options form offers the flavors"
    action = re.search(r'id="spawn_form"\s+action="([^"]+)"', r.text)
    assert action, "no spawn form"
    r = s.post(urljoin(r.url, action.group(1).replace("&amp;", "&")), data={"flavor": flavor}, timeout=60)
    assert r.status_code == 200, r.text[:500]
    return r


def wait_for_notebook(s, base, user, timeout=300):
    """Open the user's server as a browser would until the notebook (not the hub's pending page) answers."""
    deadline = time.monotonic() + timeout
    prefix = f"{base}/user/{user}/"
    last = None
    while time.monotonic() < deadline:
        last = s.get(prefix + "api/status", timeout=30, allow_redirects=True)
        if last.status_code == 200 and last.url.startswith(prefix) and "started" in last.text:
            return last.json()
        if last.status_code in (401, 403) and last.url.startswith(prefix):
            # the notebook answers but has no cookie yet: the browser's OAuth round through the hub
            s.get(prefix + "tree", timeout=30)
        time.sleep(1)
    raise AssertionError(f"the notebook of {user} did not answer: {last.status_code if last else None} "
                         f"{last.url if last else ''}")


def demo_processes(state_dir):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if state_dir in cmd:
                out.append((int(pid), cmd[:200]))
    return out


@pytest.fixture
def demo(tmp_path):
    if not os.path.isdir(NODE_BIN):
        pytest.skip("share/node/node_modules is needed (npm ci --prefix share/node)")
    state_dir = str(tmp_path / "demo")
    port = free_port()
    env = dict(os.environ, PATH=NODE_BIN + os.pathsep + os.environ["PATH"])
    log = open(tmp_path / "demo.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "jhub_broker.cli", "demo", "--state-dir", state_dir,
                             "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    yield proc, f"http://127.0.0.1:{port}", state_dir, tmp_path / "demo.out"
    if proc.poll() is None:  # the test failed before stopping it
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()


def test_demo_login_spawn_proxy_and_clean_stop(demo):
    proc, base, state_dir, out = demo
    try:
        wait_for_hub(base, proc)
        # the demo prints its banner once it has seen the hub answer, which can be after we do
        deadline = time.monotonic() + 60
        banner = out.read_text()
        while "alice-pw" not in banner and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            banner = out.read_text()
        assert "alice" in banner and "alice-pw" in banner, "the banner lists the researcher accounts"
        assert "OS_CLIENT_CONFIG_FILE=" in banner
        secret = open(os.path.join(state_dir, "secrets", "checkin-client-secret")).read().strip()
        assert secret not in banner, "no secrets on the terminal"

        s = login(base, "alice", "alice-pw")
        user = "alice@egi.eu"
        spawn_with_form(s, base)
        status = wait_for_notebook(s, base, user)
        assert "last_activity" in status
        # the service is listed for the user (Services menu)
        assert "/services/broker" in s.get(base + "/hub/home", timeout=30).text
    except BaseException:
        print(out.read_text()[-4000:])
        log = os.path.join(state_dir, "jupyterhub.log")
        if os.path.exists(log):
            print(open(log, errors="replace").read()[-6000:])
        raise

    proc.send_signal(signal.SIGINT)
    assert proc.wait(180) == 0, out.read_text()[-3000:]
    assert "demo stopped." in out.read_text()
    time.sleep(1)
    left = demo_processes(state_dir)
    assert left == [], f"processes of the demo survived: {left}"
