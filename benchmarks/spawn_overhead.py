"""Hub-side spawn overhead of the OpenStackSpawner, against a direct boot of the same VM, in one run.

Setup: the local cloud (``jhub-broker cloud``, VMs really executing their cloud-init user_data,
``boot_delay`` seconds from BUILD to ACTIVE) and an in-process JupyterHub (``MockHub`` with the real
configurable-http-proxy) whose spawner is the OpenStackSpawner (fixed-IP mode, no data volume,
image ``ubuntu-24.04-jupyter``, flavor ``m1.small``).  For i in 0..N-1, one after another:

* **hub**: ``POST /hub/api/users/bench<i>/server`` through the hub's REST API; t = 0 when the request
  is sent, stop the clock when JupyterHub reports the server *ready* (spawn finished and the proxy route
  added; read in-process every 10 ms, so the measurement adds no HTTP load).  The spawner's progress
  events are time-stamped too, for the phase breakdown.  Then the server is stopped through the API.
* **direct**: the same VM booted straight through openstacksdk (same image, flavor, network, security
  group) with user_data rendered by the *same* code (``jhub_broker.spawner.userdata``: same template,
  same VM agent that redeems a one-time secret and starts ``jupyterhub-singleuser``).  The "hub" the VM
  talks to is a minimal responder in this script (answers the bootstrap POST with the same kind of
  payload, the singleuser's version check and activity posts).  t = 0 before ``create_server``; the
  script polls ``GET /servers/{id}`` and then the notebook URL every 50 ms — an ideal, hub-less
  client — until the notebook answers.  Then the server is deleted.

Reported, median and p90 over the N pairs:

* ``ready - boot_delay``: the issue's literal metric.  It still contains the VM's own work (running
  cloud-init, starting Python and jupyter_server), which no hub can remove;
* ``direct - boot_delay``: that same VM-side work, measured without a hub;
* **hub overhead = hub ready - direct answering** for the same VM: what our hub and spawner add
  (API handling, cloud lookups, the create call, the shared cache's polling rhythm, the notebook
  backoff, the proxy route).  Hub and direct boots alternate, so both see the same machine load.

Run: ``python benchmarks/spawn_overhead.py [--spawns 20] [--boot-delay 1.0]``.
"""
import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import tempfile
import time

import requests
from tornado import httpclient, web

NODE_BIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "share", "node",
                        "node_modules", ".bin")
os.environ["PATH"] = NODE_BIN + os.pathsep + os.environ["PATH"]

from jhub_broker.emulators.mockhub import FLAVOR, IMAGE, hub_config, start_hub, stop_hub  # noqa: E402
from jhub_broker.emulators.openstack.launcher import start_cloud_process  # noqa: E402
from jhub_broker.spawner import OpenStackSpawner  # noqa: E402
from jhub_broker.spawner.userdata import build_context, render_user_data  # noqa: E402


class TimedSpawner(OpenStackSpawner):
    """The real spawner; each progress event also gets a monotonic time stamp."""

    def _progress(self, percent, message):
        self.__dict__.setdefault("_bench_marks", []).append((time.monotonic(), percent, message))
        super()._progress(percent, message)

    def get_env(self):
        env = super().get_env()
        self.__dict__["_bench_env"] = dict(env)
        return env


def bench_hub_config(cloud):
    c = hub_config(cloud, spawner_class=TimedSpawner, hub_id="bench", volume_size=0, floating_ip_pool="",
                   boot_timeout=120, notebook_timeout=120)
    c.JupyterHub.log_level = "WARN"
    return c


def api_token(app, name):
    from jupyterhub import orm
    from jupyterhub.roles import assign_default_roles
    orm_user = app.db.query(orm.User).filter_by(name=name).one_or_none()
    if orm_user is None:
        orm_user = orm.User(name=name)
        app.db.add(orm_user)
        app.db.commit()
        assign_default_roles(app.db, entity=orm_user)
    return app.users[orm_user].new_api_token(note="bench")


async def hub_spawn(app, base, name):
    """POST to ready, through the hub's API; returns (seconds, progress marks relative to t0)."""
    token = api_token(app, "admin")
    headers = {"Authorization": f"token {token}"}
    api_token(app, name)
    user = app.users[name]
    t0 = time.monotonic()
    post = asyncio.create_task(asyncio.to_thread(
        requests.post, f"{base}/hub/api/users/{name}/server", json={}, headers=headers, timeout=300))
    spawner = user.spawner
    while not spawner.ready:
        if post.done() and post.result().status_code not in (201, 202):
            raise RuntimeError(post.result().text)
        if spawner._spawn_future is not None and spawner._spawn_future.done() and not spawner.ready \
                and spawner._spawn_future.exception() is not None:
            raise RuntimeError(f"spawn failed: {spawner._spawn_future.exception()}")
        await asyncio.sleep(0.01)
    elapsed = time.monotonic() - t0
    await post
    marks = [(t - t0, p, m) for t, p, m in spawner.__dict__.get("_bench_marks", [])]
    env = dict(spawner.__dict__.get("_bench_env", {}))
    # sanity: the notebook answers through the proxy
    r = await asyncio.to_thread(requests.get, f"{base}/user/{name}/api/status",
                                headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200, r.status_code
    spawner.__dict__["_bench_marks"] = []
    r = await asyncio.to_thread(requests.delete, f"{base}/hub/api/users/{name}/server", headers=headers, timeout=300)
    assert r.status_code in (202, 204), r.text
    while spawner.active or spawner.pending:
        await asyncio.sleep(0.05)
    return elapsed, marks, env


class Responder:
    """The least a hub must do for a booting VM: redeem the bootstrap secret, answer the version check."""

    def __init__(self):
        self.payloads = {}
        responder = self

        class Bootstrap(web.RequestHandler):
            def post(self):
                secret = json.loads(self.request.body or b"{}").get("secret")
                payload = responder.payloads.pop(secret, None)
                if payload is None:
                    raise web.HTTPError(403)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(payload))

        class Api(web.RequestHandler):
            def check_xsrf_cookie(self):
                return

            def get(self, _=None):
                import jupyterhub
                self.set_header("X-JupyterHub-Version", jupyterhub.__version__)
                self.finish({"version": jupyterhub.__version__})

            def post(self, _=None):  # activity reports
                self.finish({})

        self.app = web.Application([(r"/hub/api/jhub-broker/bootstrap", Bootstrap), (r"/hub/api(/.*)?", Api)])
        self.server = self.app.listen(0, "127.0.0.1")
        self.port = next(iter(self.server._sockets.values())).getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"


async def direct_boot(conn, responder, name, env_template, image_id, flavor_id, net_id, security_group):
    """Boot the same VM with the same user_data code path, no hub; returns seconds to notebook answering."""
    secret = secrets.token_urlsafe(32)
    env = dict(env_template)
    api = responder.url + "/hub/api"
    env.update(JUPYTERHUB_API_URL=api, JUPYTERHUB_ACTIVITY_URL=f"{api}/users/{name}/activity",
               JUPYTERHUB_API_TOKEN=secrets.token_hex(16))
    responder.payloads[secret] = {"env": env, "port": 8888, "args": []}
    context = build_context(
        hub_user=name, server_name="", vm_user="jovyan",
        bootstrap={"url": api + "/jhub-broker/bootstrap", "secret": secret, "user": "jovyan", "port": 8888,
                   "notebook_dir": "/home/jovyan",
                   "singleuser": ["/opt/jhub-broker/singleuser/bin/jupyterhub-singleuser",
                                  "/usr/local/bin/jupyterhub-singleuser", "/usr/bin/jupyterhub-singleuser"]},
        volume_id=None, mount_point="/home/jovyan", singleuser_venv="/opt/jhub-broker/singleuser",
        install_packages="jupyterhub jupyterlab")
    user_data = render_user_data(context=context)
    import base64
    t0 = time.monotonic()
    server = await asyncio.to_thread(
        conn.compute.create_server, name=f"direct-{name}", image_id=image_id, flavor_id=flavor_id,
        networks=[{"uuid": net_id}], security_groups=[{"name": security_group}],
        user_data=base64.b64encode(user_data.encode()).decode())
    while True:
        s = await asyncio.to_thread(conn.compute.get_server, server.id)
        if s.status == "ACTIVE":
            break
        if s.status == "ERROR":
            raise RuntimeError(f"direct boot failed: {s.fault}")
        await asyncio.sleep(0.05)
    t_active = time.monotonic() - t0
    ip = next(a["addr"] for net in s.addresses.values() for a in net if a.get("version", 4) == 4)
    prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", f"/user/{name}/")
    client = httpclient.AsyncHTTPClient()
    deadline = time.monotonic() + 120
    while True:
        try:
            await client.fetch(f"http://{ip}:8888{prefix}api", request_timeout=5, follow_redirects=False)
            break
        except httpclient.HTTPClientError as e:
            if e.code != 599:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the directly booted notebook did not answer")
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    await asyncio.to_thread(conn.compute.delete_server, server.id)
    await asyncio.to_thread(conn.compute.wait_for_delete, server, interval=0.1, wait=60)
    return elapsed, t_active


def pct(values, q):
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def phase_table(all_marks):
    """Median time of each progress phase across spawns (relative to the POST)."""
    by_pct = {}
    for marks in all_marks:
        for t, p, m in marks:
            by_pct.setdefault(p, []).append((t, m))
    rows = []
    for p in sorted(by_pct):
        ts = [t for t, _ in by_pct[p]]
        rows.append((p, statistics.median(ts), by_pct[p][0][1]))
    return rows


async def run(args):
    from jupyterhub.tests.utils import public_host
    state_dir = tempfile.mkdtemp(prefix="jb-bench-spawn-")
    cloud = start_cloud_process(state_dir, {"boot_delay": args.boot_delay}, log_level="WARNING", timeout=60)
    app = None
    responder = Responder()
    try:
        app = await start_hub(bench_hub_config(cloud))
        base = public_host(app) + app.base_url.rstrip("/")
        conn = cloud.connect()
        image = conn.image.find_image(IMAGE)
        flavor = conn.compute.find_flavor(FLAVOR)
        net = conn.network.find_network("private")
        hub_s, direct_s, direct_active, marks = [], [], [], []
        # warm-up pair (imports, first token, security group creation), not counted
        _, _, env = await hub_spawn(app, base, "warmup")
        await direct_boot(conn, responder, "warmup", env, image.id, flavor.id, net.id, "jhub-broker-bench")
        for i in range(args.spawns):
            name = f"bench{i}"
            t_hub, m, env = await hub_spawn(app, base, name)
            t_direct, t_active = await direct_boot(conn, responder, name, env, image.id, flavor.id, net.id,
                                         "jhub-broker-bench")
            hub_s.append(t_hub)
            direct_s.append(t_direct)
            direct_active.append(t_active)
            marks.append(m)
            print(f"  {name}: hub ready {t_hub:6.2f} s   direct answering {t_direct:6.2f} s   "
                  f"overhead {t_hub - t_direct:+6.2f} s", flush=True)
    finally:
        if app is not None:
            await stop_hub(app)
        responder.server.stop()
        cloud.stop()

    d = args.boot_delay
    over = [h - x for h, x in zip(hub_s, direct_s)]
    print()
    print(f"Spawn overhead over {len(hub_s)} spawns, one after another (cloud boot_delay {d:.2f} s, "
          f"VMs executing, fixed IP, no volume)")
    print(f"{'':38} {'median':>8} {'p90':>8}")
    for label, vals in (("hub: POST -> ready", hub_s),
                        ("direct: create -> notebook answers", direct_s),
                        ("hub ready - boot_delay", [h - d for h in hub_s]),
                        ("direct answering - boot_delay (VM work)", [x - d for x in direct_s]),
                        ("hub overhead = hub ready - direct", over)):
        print(f"{label:38} {statistics.median(vals):7.2f}s {pct(vals, 0.9):7.2f}s")
    print(f"ratio hub / direct (median): {statistics.median(hub_s) / statistics.median(direct_s):.2f}")
    print("\nhub spawn phases (median time since POST, from the spawner's progress events):")
    for p, t, m in phase_table(marks):
        print(f"  {t:6.2f} s  {p:3d}%  {m}")
    print("direct boot (median time since create_server):")
    print(f"  {statistics.median(direct_active):6.2f} s  ACTIVE seen (GET /servers/{{id}} every 50 ms)")
    print(f"  {statistics.median(direct_s):6.2f} s  notebook answering (polled every 50 ms)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spawns", type=int, default=20)
    p.add_argument("--boot-delay", type=float, default=1.0)
    args = p.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
