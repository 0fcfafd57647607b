"""The broker service behind a real hub: what an admin and a user see and can do.

Tests in this module run in order and share one hub, one service and one environments root.
"""
import asyncio
import json
import os
import re
import stat
import subprocess
import sys

import pytest
import requests

from jhub_broker.services.environments.builder import find_uv
from tests.fixtures.kernel import execute_over_websocket
from tests.services.fuzz import hypothesis, json_values

ENV = "demo"
KERNEL = "broker-demo"


async def test_service_is_up_behind_the_proxy(broker_hub):
    r = await broker_hub.api("GET", "me", user="admin")
    assert r.status_code == 200, r.text
    assert r.json()["can_manage"] is True
    r = await broker_hub.api("GET", "me", user="alice")
    assert r.status_code == 200, r.text
    assert r.json()["can_manage"] is False
    r = await broker_hub.client.request("GET", broker_hub.service + "api/environments")
    assert r.status_code == 403


# ---------------------------------------------------------------- helpers: a user's real server
async def start_server(hub, name):
    r = await hub.client.request("POST", hub.base_url + f"hub/api/users/{name}/server", token=hub.token("admin"))
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    for _ in range(240):
        r = await hub.client.request("GET", hub.base_url + f"hub/api/users/{name}", token=hub.token("admin"))
        m = r.json()
        if m["server"] and not m["pending"]:
            return hub.base_url + f"user/{name}/"
        await asyncio.sleep(0.5)
    raise AssertionError(f"server of {name} did not start: {m}")


async def kernelspecs(hub, name):
    url = await start_server(hub, name)
    r = await hub.client.request("GET", url + "api/kernelspecs", token=hub.token(name))
    assert r.status_code == 200, r.text
    return r.json()["kernelspecs"]


async def run_in_kernel(hub, name, kernel_name, code):
    """Start ``kernel_name`` in ``name``'s server, execute ``code``; return (status, stdout, error text)."""
    url = await start_server(hub, name)
    token = hub.token(name)
    r = await hub.client.request("POST", url + "api/kernels", token=token, json={"name": kernel_name})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    ws_url = hub.client.base.replace("http", "ws", 1) + url + f"api/kernels/{kid}/channels"
    try:
        return await execute_over_websocket(ws_url, token, name, code)
    finally:
        await hub.client.request("DELETE", url + f"api/kernels/{kid}", token=token)


async def stream_log(hub, env, number, user="admin"):
    """Read the build log as server-sent events; return (lines, done-event, status seen at first line)."""
    url = hub.client.base + hub.service + f"api/environments/{env}/builds/{number}/log"

    def read():
        lines, done, first_status = [], None, None
        with requests.get(url, headers={"Authorization": f"token {hub.token(user)}",
                                        "Accept": "text/event-stream"}, stream=True, timeout=600) as r:
            assert r.status_code == 200, r.text
            assert r.headers["Content-Type"].startswith("text/event-stream")
            event = None
            for raw in r.iter_lines(decode_unicode=True):
                if raw.startswith("event:"):
                    event = raw[6:].strip()
                elif raw.startswith("data:"):
                    data = raw[5:].strip()
                    if event == "done":
                        done = json.loads(data)
                        break
                    if first_status is None:
                        s = requests.get(hub.client.base + hub.service + f"api/environments/{env}",
                                         headers={"Authorization": f"token {hub.token(user)}"}, timeout=30)
                        first_status = next(b["status"] for b in s.json()["builds"] if b["number"] == number)
                    lines.append(data)
                elif raw == "":
                    event = None
        return lines, done, first_status

    return await asyncio.to_thread(read)


# ---------------------------------------------------------------- the story
async def test_admin_creates_env_log_streams_and_users_get_the_kernel(broker_hub):
    hub = broker_hub
    r = await hub.api("POST", "environments", json={"name": ENV, "display_name": "Demo <b>env</b>",
                                                    "requirements": ["six"]})
    assert r.status_code == 201, r.text
    assert r.json()["build"]["number"] == 1

    lines, done, first_status = await stream_log(hub, ENV, 1)
    assert done == {"status": "ready", "number": 1}, "\n".join(lines)
    assert first_status in ("queued", "building", "testing"), "the log arrived while the build was running"
    text = "\n".join(lines)
    assert "installing with" in text and "six==" in text and "smoke test passed" in text
    if os.geteuid() == 0:
        assert "(as nobody)" in text  # the smoke test ran as an unprivileged user, like users' kernels

    env = (await hub.api("GET", f"environments/{ENV}")).json()
    assert env["current_build"] == 1 and env["requirements"] == ["six"]

    specs = await kernelspecs(hub, "alice")
    assert KERNEL in specs
    assert specs[KERNEL]["spec"]["display_name"] == "Demo <b>env</b>"
    status, out, err = await run_in_kernel(hub, "alice", KERNEL, "import six, sys; print('six', six.__version__, sys.prefix)")
    assert status == "ok", err
    assert out.startswith("six 1.")

    # alice cannot change the shared environment from her kernel: files are not writable by her
    status, out, err = await run_in_kernel(hub, "alice", KERNEL,
                                           "import six, os; print(os.access(six.__file__, os.W_OK), os.access(os.path.dirname(six.__file__), os.W_OK))")
    assert status == "ok", err
    assert out.strip() == "False False"

    r = await hub.api("GET", f"environments/{ENV}/lockfile", user="alice")
    assert r.status_code == 200
    assert "six==" in r.text and "ipykernel==" in r.text
    assert all("==" in line for line in r.text.splitlines() if line)


async def test_add_package_then_rollback_restores_previous_set(broker_hub):
    hub = broker_hub
    r = await hub.api("POST", f"environments/{ENV}/packages", json={"add": ["tomli"]})
    assert r.status_code == 202, r.text
    b = await hub.wait_build(ENV, 2)
    assert b["status"] == "ready" and b["current"]
    status, out, err = await run_in_kernel(hub, "alice", KERNEL, "import tomli, six; print('ok')")
    assert status == "ok", err

    r = await hub.api("POST", f"environments/{ENV}/rollback", json={})
    assert r.status_code == 200, r.text
    env = (await hub.api("GET", f"environments/{ENV}")).json()
    assert env["current_build"] == 1
    assert env["requirements"] == ["six"]
    status, out, err = await run_in_kernel(hub, "alice", KERNEL, "import six\nimport tomli")
    assert status == "error" and "No module named 'tomli'" in err


async def test_hand_installed_package_is_detected_and_adopted(broker_hub):
    hub = broker_hub
    py = os.path.join(hub.root, ENV, "current", "bin", "python")
    subprocess.run([find_uv(), "pip", "install", "-q", "--python", py, "tomli"], check=True)
    env = (await hub.api("GET", f"environments/{ENV}")).json()
    assert "tomli" in env["drift"]["extra"]
    r = await hub.client.request("GET", hub.service + f"environments/{ENV}", token=hub.token("admin"))
    assert "installed by hand: tomli==" in r.text

    r = await hub.api("POST", f"environments/{ENV}/drift", json={"action": "adopt"})
    assert r.status_code == 202, r.text
    b = await hub.wait_build(ENV, r.json()["build"]["number"])
    assert b["status"] == "ready"
    env = (await hub.api("GET", f"environments/{ENV}")).json()
    assert any(s.startswith("tomli==") for s in env["requirements"])
    assert env["drift"] == {"extra": {}, "missing": {}, "changed": {}}


async def test_failed_build_keeps_the_published_one(broker_hub):
    hub = broker_hub
    before = (await hub.api("GET", f"environments/{ENV}")).json()
    r = await hub.api("POST", f"environments/{ENV}/packages", json={"add": ["six==0.0.1"]})
    assert r.status_code == 202, r.text
    b = await hub.wait_build(ENV, r.json()["build"]["number"])
    assert b["status"] == "failed"
    log = (await hub.api("GET", f"environments/{ENV}/builds/{b['number']}/log")).text
    assert "build failed" in log
    after = (await hub.api("GET", f"environments/{ENV}")).json()
    assert after["current_build"] == before["current_build"]
    assert after["requirements"] == before["requirements"]
    status, out, err = await run_in_kernel(hub, "alice", KERNEL, "import six, tomli; print(six.__version__)")
    assert status == "ok" and out.strip() != "0.0.1", err


async def test_upload_requirements_file_and_upgrade(broker_hub):
    hub = broker_hub
    r = await hub.api("POST", f"environments/{ENV}/requirements",
                      files={"requirements": ("requirements.txt", b"# ours\ntomli\nsix>=1.10\n")},
                      data={"mode": "merge"})
    assert r.status_code == 202, r.text
    b = await hub.wait_build(ENV, r.json()["build"]["number"])
    assert b["status"] == "ready"
    env = (await hub.api("GET", f"environments/{ENV}")).json()
    assert env["requirements"] == ["six>=1.10", "tomli"]
    r = await hub.api("POST", f"environments/{ENV}/packages", json={"upgrade": ["six"]})
    assert r.status_code == 202, r.text
    b = await hub.wait_build(ENV, r.json()["build"]["number"])
    assert b["status"] == "ready"
    pins = (await hub.api("GET", f"environments/{ENV}/lockfile")).text
    assert any(line.startswith("six==") for line in pins.splitlines())


async def test_rollback_to_a_retired_build_rebuilds_it_from_its_lockfile(broker_hub):
    hub = broker_hub
    env = (await hub.api("GET", f"environments/{ENV}")).json()
    first = next(b for b in env["builds"] if b["number"] == 1)
    assert first["status"] == "retired"  # removed from disk by retention (keep_builds=1)
    current = env["current_build"]
    r = await hub.api("POST", f"environments/{ENV}/rollback", json={"build": 1})
    assert r.status_code == 200, r.text
    b = await hub.wait_build(ENV, r.json()["build"]["number"])
    assert b["status"] == "ready" and b["current"]
    assert b["lockfile"] == first["lockfile"]
    assert (await hub.api("GET", f"environments/{ENV}")).json()["requirements"] == ["six"]
    # and forward again: the newer build is still on disk, so this is instant
    r = await hub.api("POST", f"environments/{ENV}/rollback", json={"build": current})
    assert r.status_code == 200 and r.json()["build"]["status"] == "ready"
    assert (await hub.api("GET", f"environments/{ENV}")).json()["current_build"] == current


async def test_hand_install_can_be_discarded(broker_hub):
    hub = broker_hub
    py = os.path.join(hub.root, ENV, "current", "bin", "python")
    subprocess.run([find_uv(), "pip", "install", "-q", "--python", py, "iniconfig"], check=True)
    drift = (await hub.api("GET", f"environments/{ENV}/drift", user="alice")).json()
    assert list(drift["extra"]) == ["iniconfig"]
    r = await hub.api("POST", f"environments/{ENV}/drift", json={"action": "discard"})
    assert r.status_code == 202, r.text
    b = await hub.wait_build(ENV, r.json()["build"]["number"])
    assert b["status"] == "ready"
    assert (await hub.api("GET", f"environments/{ENV}/drift")).json()["extra"] == {}
    status, out, err = await run_in_kernel(hub, "alice", KERNEL, "import iniconfig")
    assert status == "error" and "No module named 'iniconfig'" in err


async def test_hand_made_env_dirs_are_found_adopted_or_discarded(broker_hub):
    hub = broker_hub
    made = os.path.join(hub.root, "handmade")
    subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--no-seed", "--python", "/usr/bin/python3", made],
                   check=True)
    subprocess.run([find_uv(), "pip", "install", "-q", "--python", os.path.join(made, "bin", "python"), "six"],
                   check=True)
    os.makedirs(os.path.join(hub.root, "junk"))
    r = await hub.api("GET", "unmanaged", user="alice")
    found = {u["name"]: u for u in r.json()["unmanaged"]}
    assert sorted(found) == ["handmade", "junk"]
    assert found["handmade"]["is_venv"] and not found["junk"]["is_venv"]
    r = await hub.client.request("GET", hub.service, token=hub.token("admin"))
    assert "handmade" in r.text and "junk" in r.text

    r = await hub.api("POST", "unmanaged/junk", user="alice", json={"action": "discard"})
    assert r.status_code == 403
    r = await hub.api("POST", "unmanaged/junk", json={"action": "discard"})
    assert r.status_code == 200, r.text
    assert not os.path.exists(os.path.join(hub.root, "junk"))

    running_before = await kernelspecs(hub, "alice")  # alice's server is running from earlier tests
    assert "broker-handmade" not in running_before
    r = await hub.api("POST", "unmanaged/handmade", json={"action": "adopt", "display_name": "Hand made"})
    assert r.status_code == 202, r.text
    b = await hub.wait_build("handmade", r.json()["build"]["number"])
    assert b["status"] == "ready"
    env = (await hub.api("GET", "environments/handmade")).json()
    assert [s.split("==")[0] for s in env["requirements"]] == ["six"]
    assert (await hub.api("GET", "unmanaged")).json()["unmanaged"] == []
    # the same running server lists the new kernel: no restart
    specs = await kernelspecs(hub, "alice")
    assert specs["broker-handmade"]["spec"]["display_name"] == "Hand made"


MUTATING = [
    ("POST", "environments", {"name": "x1", "requirements": ["six"]}),
    ("DELETE", f"environments/{ENV}", None),
    ("PATCH", f"environments/{ENV}", {"display_name": "hacked"}),
    ("POST", f"environments/{ENV}/delete", {}),
    ("POST", f"environments/{ENV}/display-name", {"display_name": "hacked"}),
    ("POST", f"environments/{ENV}/packages", {"add": ["tomli"]}),
    ("POST", f"environments/{ENV}/requirements", {"requirements": "tomli\n"}),
    ("POST", f"environments/{ENV}/rollback", {}),
    ("POST", f"environments/{ENV}/drift", {"action": "discard"}),
    ("POST", "unmanaged/whatever", {"action": "discard"}),
]


async def test_non_admin_cannot_change_anything(broker_hub):
    hub = broker_hub
    # every (method, route) the service answers that can change something is in MUTATING
    from tornado.web import RequestHandler
    from jhub_broker.services.handlers import routes
    covered = {(m, re.sub(r"^api/", "", p).replace(ENV, "X").replace("whatever", "X")) for m, p, _ in MUTATING}
    for pattern, handler in routes("/p/"):
        path = pattern[len("/p/"):].replace("([^/]+)", "X")
        if handler.__module__.startswith("jupyterhub"):
            continue  # the hub's OAuth callback
        for method in ("post", "put", "patch", "delete"):
            if getattr(handler, method) is not getattr(RequestHandler, method):
                assert (method.upper(), path.replace("api/", "", 1)) in covered, (method, path)
    before = (await hub.api("GET", f"environments/{ENV}")).json()
    for method, path, body in MUTATING:
        r = await hub.api(method, path, user="alice", json=body)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "custom:broker-environments:manage" in r.json()["message"]
    after = (await hub.api("GET", f"environments/{ENV}")).json()
    assert after == before


async def test_invalid_names_and_specs_are_rejected_with_clear_messages(broker_hub):
    hub = broker_hub
    cases = [
        ({"name": "../x", "requirements": ["six"]}, "must not contain"),
        ({"name": "a/b", "requirements": ["six"]}, "must not contain"),
        ({"name": "ok1", "requirements": ["--index-url https://evil.example/simple"]}, "options such as --index-url"),
        ({"name": "ok1", "requirements": ["pkg; rm -rf /"]}, "valid environment marker"),
        ({"name": "ok1", "requirements": ["pkg @ https://evil.example/x.whl"]}, "URLs and paths are not allowed"),
        ({"name": "ok1", "requirements": ["six"], "python": "2.7"}, "is not available"),
    ]
    for body, expected in cases:
        r = await hub.api("POST", "environments", json=body)
        assert r.status_code == 400, (body, r.text)
        assert expected in r.json()["message"], (body, r.json())
    r = await hub.api("POST", f"environments/{ENV}/packages", json={"add": ["-e ."]})
    assert r.status_code == 400 and "not allowed" in r.json()["message"]
    r = await hub.api("POST", f"environments/{ENV}/requirements", data="six\n--extra-index-url http://x\n",
                      headers={"Content-Type": "text/plain"})
    assert r.status_code == 400 and "--extra-index-url" in r.json()["message"]
    r = await hub.api("GET", "environments/..%2Fetc")
    assert r.status_code in (400, 404)
    names = [e["name"] for e in (await hub.api("GET", "environments")).json()["environments"]]
    assert names == [ENV, "handmade"]


async def test_pages_escape_what_they_show(broker_hub):
    hub = broker_hub
    r = await hub.client.request("GET", hub.service, token=hub.token("alice"))
    assert r.status_code == 200, r.text
    assert "Demo &lt;b&gt;env&lt;/b&gt;" in r.text
    assert "<b>env</b>" not in r.text
    r = await hub.client.request("GET", hub.service + f"environments/{ENV}", token=hub.token("admin"))
    assert r.status_code == 200
    assert "Demo &lt;b&gt;env&lt;/b&gt;" in r.text and "<b>env</b>" not in r.text
    assert 'name="_xsrf"' in r.text
    r = await hub.client.request("GET", hub.service + "history", token=hub.token("admin"))
    assert r.status_code == 200 and "rollback" in r.text


async def test_cookie_form_without_xsrf_is_refused(broker_hub):
    """A browser session (OAuth cookie) can post a form only with the page's _xsrf token."""
    hub = broker_hub
    base = hub.client.base

    def flow():
        s = requests.Session()
        r = s.get(base + hub.base_url + "hub/login", timeout=30)
        xsrf = s.cookies.get("_xsrf")
        r = s.post(base + hub.base_url + "hub/login", params={"_xsrf": xsrf},
                   data={"username": "admin", "password": "admin"}, timeout=30)
        r = s.get(base + hub.service + f"environments/{ENV}", timeout=30)  # OAuth dance via redirects
        assert r.status_code == 200 and "Build log" in r.text, r.text[:500]
        import re
        token = re.search(r'name="_xsrf" value="([^"]+)"', r.text).group(1)
        url = base + hub.service + f"api/environments/{ENV}/display-name"
        bad = s.post(url, data={"display_name": "forged"}, allow_redirects=False, timeout=30)
        # a token that authenticates nothing does not switch the check off for the cookie session
        bogus = s.post(url, data={"display_name": "forged"}, headers={"Authorization": "token bogus"},
                       allow_redirects=False, timeout=30)
        assert bogus.status_code == 403, (bogus.status_code, bogus.text[:300])
        good = s.post(url, data={"display_name": "Demo <b>env</b>", "_xsrf": token}, allow_redirects=False,
                      timeout=30)
        evil = s.post(base + hub.service + "api/environments", data={"name": "<script>x", "_xsrf": token},
                      allow_redirects=False, timeout=30)
        return bad, good, evil

    bad, good, evil = await asyncio.to_thread(flow)
    # a refused form shows the reason on an HTML page, escaped
    assert evil.status_code == 400 and evil.headers["Content-Type"].startswith("text/html")
    assert "&lt;script&gt;x" in evil.text and "<script>x" not in evil.text
    assert bad.status_code == 403
    assert good.status_code == 302, good.text
    env = (await hub.api("GET", f"environments/{ENV}")).json()
    assert env["display_name"] == "Demo <b>env</b>"


async def test_history_and_usage(broker_hub):
    hub = broker_hub
    actions = (await hub.api("GET", "history", user="alice")).json()["actions"]
    whats = [a["action"] for a in actions]
    for expected in ("create", "packages", "rollback", "adopt-drift", "discard-unmanaged", "upload"):
        assert expected in whats
    assert all(a["user"] == "admin" for a in actions)
    create = next(a for a in actions if a["action"] == "create")
    assert create["result"] == "ok" and create["build"] == 1
    assert "failed" in [a["result"] for a in actions]
    usage = (await hub.api("GET", "usage")).json()
    demo = next(e for e in usage["environments"] if e["name"] == ENV)
    on_disk = [b for b in demo["builds"] if b["size_bytes"]]
    assert len(on_disk) <= 2  # current + keep_builds=1
    assert any(b["status"] == "retired" for b in demo["builds"])


async def test_vm_sync_builds_the_same_env_from_lockfiles(broker_hub):
    """What a user's VM runs at boot: fetch lockfiles, build locally with the same builder, register kernels."""
    hub = broker_hub
    import pathlib
    import shutil
    from tests.services.conftest import world_readable_tmpdir
    tmp_path = pathlib.Path(world_readable_tmpdir("jb-vm-"))
    try:
        await _sync_and_check(hub, tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


async def _sync_and_check(hub, tmp_path):
    vm_root, data_dir = tmp_path / "envs", tmp_path / "share-jupyter"
    cmd = [sys.executable, "-m", "jhub_broker.services.environments.sync",
           "--service-url", hub.client.base + hub.service, "--root", str(vm_root),
           "--jupyter-data-dir", str(data_dir), "--python", "3.11=/usr/bin/python3"]
    env = dict(os.environ, JHUB_BROKER_TOKEN=hub.token("alice"))
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, out
    assert "smoke test passed" in out
    spec = json.loads((data_dir / "kernels" / KERNEL / "kernel.json").read_text())
    assert spec["display_name"] == "Demo <b>env</b>"
    service_lock = (await hub.api("GET", f"environments/{ENV}/lockfile")).text
    assert (vm_root / ENV / "current" / "jhub-broker-lock.txt").read_text() == service_lock
    check = await asyncio.create_subprocess_exec(spec["argv"][0], "-c", "import six, tomli; print('ok')",
                                                 stdout=asyncio.subprocess.PIPE)
    assert (await check.communicate())[0].decode().strip() == "ok"
    # a second run changes nothing
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    assert proc.returncode == 0 and '"demo": "unchanged"' in out and '"handmade": "unchanged"' in out, out


async def test_delete_removes_the_kernel(broker_hub):
    hub = broker_hub
    r = await hub.api("DELETE", f"environments/{ENV}")
    assert r.status_code == 204
    assert KERNEL not in await kernelspecs(hub, "alice")
    assert not os.path.exists(os.path.join(hub.root, ENV))


# ---------------------------------------------------------------- hostile input, builds, the service's token
async def test_hostile_json_gets_400_naming_the_field_and_error_pages_keep_their_links(broker_hub):
    hub = broker_hub
    deep = "[" * 100_000 + "]" * 100_000
    r = await hub.api("POST", "environments", data=deep, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["message"], r.text[:300]
    cases = [
        ({"name": "x2", "display_name": {"a": 1}}, "display_name must be a string"),
        ({"name": "x2", "requirements": 5}, "requirements must be a list"),
        ({"name": "x2", "requirements": [5]}, "requirements: each package spec must be a string"),
        ({"name": {"a": 1}}, "name must be a string"),
        ({"name": "x2", "python": ["3.11"]}, "is not available"),
    ] + [({"name": "x2", "requirements": [f'six; os_name == "a{ch}b"']}, "control characters")
         for ch in ("\x0b", "\x0c", "\u2028", "\u202e")]
    for body, expected in cases:
        r = await hub.api("POST", "environments", json=body)
        assert r.status_code == 400, (body, r.status_code, r.text[:300])
        assert expected in r.json()["message"], (body, r.json())
    for path, body, field in ((f"environments/{ENV}/packages", {"add": {"x": 1}}, "add"),
                              (f"environments/{ENV}/packages", {"remove": 5}, "remove"),
                              (f"environments/{ENV}/requirements", {"requirements": {"x": 1}}, "requirements"),
                              (f"environments/{ENV}/rollback", {"build": "²"}, "build")):
        r = await hub.api("POST", path, json=body)
        assert r.status_code == 400 and field in r.json()["message"], (path, r.status_code, r.text[:300])
    # a 100 KB value is not echoed back
    r = await hub.api("POST", "environments", json={"name": "x" * 100_000})
    assert r.status_code == 400 and len(r.text) < 2000, len(r.text)
    r = await hub.api("POST", "environments", json={"name": "x2", "requirements": ["bad spec!"] * 400})
    assert r.status_code == 400 and len(r.text) < 2000, len(r.text)
    assert "x2" not in [e["name"] for e in (await hub.api("GET", "environments")).json()["environments"]]
    # an error page (HTML) has the same navigation as every page
    r = await hub.client.request("GET", hub.service + "environments/nosuchenv", token=hub.token("alice"))
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
    nav = r.text.split("<main>")[0]
    assert 'href=""' not in nav
    for link in (hub.base_url + "hub/home", hub.service, hub.service + "history", hub.base_url + "hub/logout"):
        assert f'href="{link}"' in nav, (link, nav)


async def test_any_json_body_gets_400_or_404_never_500(broker_hub):
    """Property: any JSON value sent to the mutating JSON routes gets 400 (or 404 for the unknown environment)."""
    if hypothesis is None:
        pytest.skip("hypothesis is not installed")
    hub = broker_hub
    base = hub.client.base + hub.service + "api/"
    headers = {"Authorization": f"token {hub.token('admin')}"}
    paths = ["environments/nosuchenv/" + p for p in ("packages", "requirements", "rollback", "drift",
                                                    "display-name")]

    @hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
    @hypothesis.given(json_values())
    def check(body):
        for path in paths:
            r = requests.post(base + path, json=body, headers=headers, timeout=30)
            assert r.status_code in (400, 404), (path, body, r.status_code, r.text[:300])
        # a creation that cannot succeed (the name is invalid), whatever else the body holds
        named = dict(body, name="Not A Name") if isinstance(body, dict) else body
        r = requests.post(base + "environments", json=named, headers=headers, timeout=30)
        assert r.status_code == 400, (named, r.status_code, r.text[:300])

    await asyncio.to_thread(check)  # the hub serves on this thread's event loop meanwhile


async def test_builds_run_unprivileged_without_the_service_secrets(broker_hub):
    """A package's build backend (code from the index) runs as the build user and sees no token or key."""
    import pwd
    from tests.services.probe import read_probe
    hub = broker_hub
    r = await hub.api("POST", "environments", json={"name": "probe", "requirements": ["jhub-broker-build-probe==1.0"]})
    assert r.status_code == 201, r.text
    b = await hub.wait_build("probe", 1)
    log = (await hub.api("GET", "environments/probe/builds/1/log")).text
    assert b["status"] == "ready", log[-2000:]
    seen = read_probe(hub.probe)
    nobody = pwd.getpwnam("nobody").pw_uid
    assert seen["uid"] == seen["euid"] == nobody
    service_token = hub.app._service_map["broker"].api_token
    assert service_token
    for name, value in seen["env"].items():
        assert service_token not in value, name
        assert not any(w in name.upper() for w in ("TOKEN", "SECRET", "CRYPT")), name
        assert not name.startswith("JUPYTERHUB_"), name
    assert seen["env"]["UV_FIND_LINKS"]  # what the operator allows does reach the build
    # the published build belongs to the service again: the build user cannot change it
    current = os.path.realpath(os.path.join(hub.root, "probe", "current"))
    for root, dirs, files in os.walk(current):
        for n in dirs + files:
            st = os.lstat(os.path.join(root, n))
            writable = st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode)  # a symlink's own mode is always 777
            assert st.st_uid == os.geteuid() and not writable, (os.path.join(root, n), oct(st.st_mode))
    assert os.stat(os.path.join(hub.root, ".cache")).st_uid == nobody
    assert os.stat(os.path.join(hub.root, "probe")).st_uid == os.geteuid()
    assert (await hub.api("DELETE", "environments/probe")).status_code == 204


async def test_the_service_token_cannot_act_for_users(broker_hub):
    """Without the authentication pages the service calls no hub API: its token has no role."""
    hub = broker_hub
    token = hub.app._service_map["broker"].api_token
    api = hub.base_url + "hub/api/"
    r = await hub.client.request("GET", api + "user", token=token)
    assert r.status_code == 200 and r.json()["kind"] == "service"
    assert not [s for s in r.json().get("scopes", []) if "users" in s or "servers" in s or s == "admin-ui"], r.json()
    for method, path in (("GET", "users"), ("GET", "users/alice/tokens"), ("POST", "users/alice/server"),
                         ("POST", "users/alice/tokens"), ("PATCH", "users/alice")):
        r = await hub.client.request(method, api + path, token=token, json={} if method != "GET" else None)
        assert r.status_code in (403, 404), (method, path, r.status_code)
