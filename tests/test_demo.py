"""The whole product in a real browser: the README's demo command (``jhub-broker demo``) driven through headless
Chromium (Debian's chromium, Playwright), one journey, a screenshot at every step.

1. carol (not in the VO) is refused with the enrolment page;
2. alice logs in through the Check-in stand-in, sees the broker's environments page, picks a flavor on the spawn
   form and watches the progress page until her notebook on a VM opens;
3. in her notebook (JupyterLab on the VM) a cell reads her group's bucket and is denied another VO's; a notebook
   on the broker's ``example`` kernel runs ``import six`` from the VM's copy of that environment;
4. bob (admin) adds carol on the broker's authentication page and carol logs in at once, no restart;
5. bob tests the OAuth settings, applies a method change that restarts the hub (alice's VM is adopted), then a
   broken one that is rolled back;
6. alice stops her server and the VM, its port and floating IP are gone from the cloud;
7. Ctrl-C stops the demo and no process of it survives.

Screenshots go to ``$JHUB_BROKER_SCREENSHOTS`` (default ``artifacts/e2e/`` in the checkout).
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from jhub_broker.emulators.checkin import default_node_modules

NODE_BIN = os.path.join(default_node_modules(), ".bin")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOTS = os.environ.get("JHUB_BROKER_SCREENSHOTS") or os.path.join(ROOT, "artifacts", "e2e")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ALICE = "alice@egi.eu"
CAROL = "carol@egi.eu"

S3_CELL = """\
import boto3, botocore, s3fs

def attempt(what, fn):
    try:
        fn()
        print(what, "ALLOWED")
    except (botocore.exceptions.ClientError, PermissionError, OSError) as e:
        print(what, "DENIED", type(e).__name__)

s3 = boto3.client("s3")  # the default profile (her first grant): no keys in the notebook
attempt("write analysis-private", lambda: s3.put_object(Bucket="analysis-private", Key="nb.txt", Body=b"x"))
attempt("s3fs analysis-private", lambda: s3fs.S3FileSystem().ls("analysis-private"))
ref = boto3.Session(profile_name="reference-data").client("s3")  # a named profile: credential_process
attempt("read reference-data", lambda: ref.list_objects_v2(Bucket="reference-data"))
attempt("write reference-data", lambda: ref.put_object(Bucket="reference-data", Key="x.txt", Body=b"x"))
attempt("read other-vo", lambda: s3.list_objects_v2(Bucket="other-vo"))
attempt("read other-vo (reference-data profile)", lambda: ref.list_objects_v2(Bucket="other-vo"))
print("S3-CHECK-DONE")
"""

ENV_CELL = """\
import sys, six
print("six", six.__version__, "from", sys.prefix)
print("ENV-CHECK-DONE")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook(source, kernel, display):
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": uuid.uuid4().hex[:8], "metadata": {},
                       "outputs": [], "source": source}],
            "metadata": {"kernelspec": {"name": kernel, "display_name": display, "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


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


def wait_until(check, timeout, what, interval=1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - retried until the deadline; the last one is reported
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


class Shots:
    def __init__(self, directory):
        self.dir = directory
        self.n = 0
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)

    def __call__(self, page, name):
        self.n += 1
        path = os.path.join(self.dir, f"{self.n:02d}-{name}.png")
        page.screenshot(path=path, full_page=True)
        return path


@pytest.fixture
def demo(tmp_path):
    assert os.path.isdir(NODE_BIN), "share/node/node_modules is missing: run scripts/setup.sh"
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
            proc.wait(240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()


@pytest.fixture
def browser():
    # no skip: scripts/setup.sh installs both, so a missing one is a set-up bug to see, not to hide
    from playwright import sync_api
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: run scripts/setup.sh"
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def check_in(browser, base, username, password):
    """A fresh browser (own cookies) logs in: /hub/login -> the Check-in stand-in's form -> back at the hub."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(60_000)
    page = ctx.new_page()
    page.goto(base + "/hub/login?next=%2Fhub%2Fhome")
    assert "/auth/realms/egi/" in page.url, f"/hub/login did not go to the Check-in stand-in: {page.url}"
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def cloud_connection(state_dir):
    """The demo's cloud through the real openstacksdk, from the clouds.yaml the demo wrote (no env vars)."""
    import openstack
    from openstack.config import loader
    from jhub_broker.demo.cloud import CLOUD_NAME
    cfg = loader.OpenStackConfig(config_files=[os.path.join(state_dir, "clouds.yaml")], load_envvars=False)
    return openstack.connection.Connection(config=cfg.get_one(cloud=CLOUD_NAME))


def hub_servers(conn):
    return [s for s in conn.compute.servers() if (s.metadata or {}).get("jhub_broker_hub") == "demo"]


def put_notebook(page, prefix, name, nb):
    """Save a notebook through the server's contents API with the browser's own session (cookie + _xsrf)."""
    status = page.evaluate("""async ([url, nb]) => {
        const m = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/);
        const r = await fetch(url, {method: "PUT", credentials: "same-origin",
            headers: {"Content-Type": "application/json", "X-XSRFToken": m ? decodeURIComponent(m[1]) : ""},
            body: JSON.stringify({type: "notebook", format: "json", content: nb})});
        return r.status;
    }""", [prefix + "api/contents/" + name, nb])
    assert status in (200, 201), f"saving {name}: HTTP {status}"


def run_notebook_cell(page, prefix, name, marker, timeout=240):
    """Open the notebook in JupyterLab, run its cell (the toolbar's run button) and return the output text."""
    page.goto(prefix + "lab/tree/" + name + "?reset")  # ?reset: only this notebook open, no restored tabs
    panel = page.locator(".jp-NotebookPanel:visible")
    cell = panel.locator(".jp-Cell").first
    cell.wait_for(timeout=120_000)
    # the kernel connects after the notebook renders; a click before that is not queued
    panel.locator(".jp-Notebook-ExecutionIndicator[data-status=idle]").first.wait_for(state="attached",
                                                                                   timeout=120_000)
    run = panel.locator("jp-button[data-command='notebook:run-cell-and-select-next'], "
                       "button[data-command='notebook:run-cell-and-select-next']").first
    output = cell.locator(".jp-OutputArea")

    def ran():
        if marker in output.inner_text():
            return True
        if cell.locator(".jp-InputPrompt").inner_text().strip() in ("[ ]:", ""):
            cell.click()
            run.click()
        return False
    wait_until(ran, timeout, f"{name} printed {marker}", interval=5)
    return output.inner_text()


def wait_for_restart(page, prefix, states, timeout=300):
    """Reload the login-method page (the service restarts with the hub) until the restart has an outcome."""
    def outcome():
        r = page.goto(prefix + "auth/method")
        if r is None or r.status != 200:
            return None
        status = page.locator("#restart-status")
        if status.count() and any(f"status-{s}" in (status.get_attribute("class") or "") for s in states):
            return status.inner_text()
        return None
    return wait_until(outcome, timeout, f"a restart outcome in {states}", interval=2)


def apply_method(page, prefix, fields, button):
    """Open the EGI Check-in section of the method page, fill it, press ``button``."""
    page.goto(prefix + "auth/method")
    section = page.locator("details", has=page.locator("summary", has_text="EGI Check-in"))
    if section.get_attribute("open") is None:
        section.locator("summary").click()
    form = section.locator("form")
    for name, value in fields.items():
        field = form.locator(f"[name={name}]")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    form.locator("button", has_text=button).click()
    page.wait_for_load_state()


def test_the_whole_journey_in_a_browser(demo, browser):
    proc, base, state_dir, out = demo
    shot = Shots(SHOTS)
    svc = base + "/services/broker/"
    user_prefix = f"{base}/user/{ALICE}/"
    try:
        wait_until(lambda: proc.poll() is None and requests.get(base + "/hub/api/", timeout=2).status_code == 200,
                   300, "the demo's hub answers")
        banner = wait_until(lambda: "alice-pw" in out.read_text() and out.read_text(), 60, "the demo's banner")
        secret = open(os.path.join(state_dir, "secrets", "checkin-client-secret")).read().strip()
        assert secret not in banner, "no secrets on the terminal"
        issuer = re.search(r"Check-in stand-in \((\S+)\)", banner).group(1)

        # 1. carol is not in vo.example.eu: the refusal page names the VO and where to enrol
        carol = check_in(browser, base, "carol", "carol-pw")
        assert "vo.example.eu" in carol.content() and "aai.egi.eu/registry" in carol.content()
        shot(carol, "carol-refused")

        # 2. alice: environments page, spawn form with a flavor, progress, the notebook on her VM
        alice = check_in(browser, base, "alice", "alice-pw")
        assert alice.url.startswith(base + "/hub/"), alice.url
        shot(alice, "alice-home")

        def example_published():
            alice.goto(svc)
            return "published" in alice.locator("#environments tbody tr", has_text="example").first.inner_text()
        wait_until(example_published, 300, "the example environment is published", interval=3)
        shot(alice, "environments-page")

        alice.goto(base + "/hub/spawn")
        alice.select_option("select[name=flavor]", "m1.medium")
        shot(alice, "spawn-form")
        alice.locator("#spawn_form [type=submit]").click()
        alice.wait_for_url(re.compile(r".*/hub/spawn-pending/.*"))
        alice.locator("#progress-details").evaluate("d => d.open = true")  # the event log, as a user would open it
        alice.locator("#progress-log .progress-log-event").nth(1).wait_for(timeout=120_000)
        shot(alice, "spawn-progress")
        assert "volume" in alice.locator("#progress-log").inner_text().lower(), "the real phases are shown"
        alice.wait_for_url(re.compile(re.escape(user_prefix) + ".*"), timeout=420_000)
        alice.locator(".jp-LabShell, #main-panel, .jp-NotebookPanel, #jp-top-panel").first.wait_for(timeout=120_000)
        shot(alice, "notebook-on-vm")
        conn = cloud_connection(state_dir)
        vms = hub_servers(conn)
        assert [s.metadata.get("jhub_broker_user") for s in vms] == [ALICE]
        assert vms[0].flavor.get("original_name", vms[0].flavor.get("name")) == "m1.medium"
        # counted, not filtered by port: the cloud detaches a floating IP when its port goes, so a leaked
        # address would have no port
        assert len(list(conn.network.ips())) == 1, "alice's VM has its floating IP"

        # 3. a cell reads her group's bucket and is denied another VO's; the broker's kernel runs on the VM
        put_notebook(alice, user_prefix, "s3-check.ipynb", notebook(S3_CELL, "python3", "Python 3"))
        text = run_notebook_cell(alice, user_prefix, "s3-check.ipynb", "S3-CHECK-DONE")
        shot(alice, "notebook-s3-cell")
        for line in ("write analysis-private ALLOWED", "s3fs analysis-private ALLOWED", "read reference-data ALLOWED",
                     "write reference-data DENIED", "read other-vo DENIED",
                     "read other-vo (reference-data profile) DENIED"):
            assert line in text, text
        put_notebook(alice, user_prefix, "env-check.ipynb", notebook(ENV_CELL, "broker-example", "Python 3 (example)"))
        text = run_notebook_cell(alice, user_prefix, "env-check.ipynb", "ENV-CHECK-DONE")
        shot(alice, "notebook-example-kernel")
        assert "/var/lib/jhub-broker/environments" in text, text

        # 4. bob (VO manager, the bootstrap admin) allows carol on the authentication page: no restart
        bob = check_in(browser, base, "bob", "bob-pw")
        bob.goto(svc + "auth")
        shot(bob, "admin-auth-page")
        form = bob.locator("form", has=bob.locator("button", has_text="Add allowed user"))
        form.locator("input[name=name]").fill(CAROL)
        form.locator("button").click()
        bob.wait_for_load_state()
        assert CAROL in bob.content()
        shot(bob, "admin-added-carol")
        carol = check_in(browser, base, "carol", "carol-pw")
        assert carol.url.startswith(base + "/hub/"), f"carol was not let in at once: {carol.url}"
        assert "Start My Server" in carol.content() or carol.locator("#start").count()
        shot(carol, "carol-logged-in")

        # 5. a method change: tested, applied, the hub restarts; alice's VM keeps running and is adopted
        good = {"checkin_env": "demo", "issuer": issuer, "client_id": "jupyterhub-demo", "client_secret": secret,
                "oauth_callback_url": base + "/hub/oauth_callback", "username_pattern": "",
                "login_service": "EGI Check-in (demo site)"}
        apply_method(bob, svc, good, "Test OAuth settings")
        assert "passed" in bob.locator("h2", has_text="OAuth test").inner_text()
        assert secret not in bob.content()
        shot(bob, "method-oauth-test")
        apply_method(bob, svc, good, "Apply and restart")
        shot(bob, "method-restarting")
        outcome = wait_for_restart(bob, svc, ["ok"])
        assert "back" in outcome
        shot(bob, "method-restarted")
        assert secret not in bob.content()
        assert [s.id for s in hub_servers(conn)] == [vms[0].id], "the restart kept alice's VM"
        alice.goto(user_prefix + "lab")
        alice.locator(".jp-LabShell, #main-panel").first.wait_for(timeout=120_000)

        # ... and a broken one (the bootstrap admin would not match): the hub does not start, it is rolled back
        broken = dict(good, username_pattern="^zz-[a-z]+$")
        apply_method(bob, svc, broken, "Apply and restart")
        outcome = wait_for_restart(bob, svc, ["rolled-back", "failed"])
        shot(bob, "method-rolled-back")
        assert "rolled-back" in bob.locator("#restart-status").get_attribute("class"), outcome
        log = open(os.path.join(state_dir, "jupyterhub.log"), errors="replace").read()
        assert "is not valid" in log, "the broken config really failed to start the hub"
        alice2 = check_in(browser, base, "alice", "alice-pw")
        assert alice2.url.startswith(base + "/hub/"), "log in works again after the rollback"

        # 6. alice stops her server: the VM, its ports and floating IP are gone
        alice.goto(base + "/hub/home")
        alice.locator("#stop").click()
        alice.locator("#start").wait_for(timeout=240_000)
        wait_until(lambda: "Start My Server" in alice.locator("#start").inner_text(), 240, "the server stopped")
        shot(alice, "server-stopped")
        assert wait_until(lambda: not hub_servers(conn) and "no VM", 120, "the VM is deleted")
        assert [ip.floating_ip_address for ip in conn.network.ips()] == [], "no floating IP is left"
        volumes = [v for v in conn.block_storage.volumes() if (v.metadata or {}).get("jhub_broker_user") == ALICE]
        assert len(volumes) == 1 and volumes[0].status == "available", "her data volume stays"
    except BaseException:
        print(out.read_text()[-4000:])
        log = os.path.join(state_dir, "jupyterhub.log")
        if os.path.exists(log):
            print(open(log, errors="replace").read()[-8000:])
        raise

    # 7. Ctrl-C: everything stops
    proc.send_signal(signal.SIGINT)
    assert proc.wait(240) == 0, out.read_text()[-3000:]
    assert "demo stopped." in out.read_text()
    time.sleep(1)
    assert demo_processes(state_dir) == [], "processes of the demo survived"
    # every step's screenshot is there for a human to look at
    saved = sorted(f for f in os.listdir(SHOTS) if f.endswith(".png"))
    assert len(saved) == shot.n and all(os.path.getsize(os.path.join(SHOTS, f)) > 0 for f in saved), saved
