"""Shared environments on VMs: a real hub with the broker service and OpenStackSpawner against the local cloud.

An admin publishes an environment through the broker API; a user's VM then builds the same environment
from its lockfile with the broker's own sync code (shipped in user_data) and the notebook lists its kernel.
"""
import asyncio
import os
import shutil
import tempfile
import time

from traitlets.config import Config

from jhub_broker.services.config import free_port, service_config
from jhub_broker.spawner.userdata import VM_PKG_DIR
from tests.fixtures.kernel import execute_over_websocket

ENV = "vmsix"
KERNEL = "broker-vmsix"
VM_ROOT = "/var/lib/jhub-broker/environments"


async def wait_published(hub, env, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await hub.request("GET", f"services/broker/api/environments/{env}", user="admin")
        assert r.status_code == 200, r.text
        model = r.json()
        if model.get("current_build"):
            return model
        failed = [b for b in model["builds"] if b["status"] == "failed"]
        assert not failed, model
        await asyncio.sleep(1)
    raise AssertionError(f"environment {env} was not published")


async def run_in_kernel(hub, name, kernel_name, code):
    """Start ``kernel_name`` in ``name``'s server through the proxy, run ``code``; (status, stdout, errors)."""
    r = await hub.request("POST", f"user/{name}/api/kernels", user=name, json={"name": kernel_name})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    ws_url = hub.base.replace("http", "ws", 1) + hub.prefix.rstrip("/") + f"/user/{name}/api/kernels/{kid}/channels"
    try:
        return await execute_over_websocket(ws_url, hub.token(name), name, code)
    finally:
        await hub.request("DELETE", f"user/{name}/api/kernels/{kid}", user=name)


async def stop_services(app):
    for service in getattr(app, "_service_map", {}).values():
        if getattr(service, "managed", False) and getattr(service, "spawner", None) is not None:
            try:
                await service.stop()
            except Exception:  # noqa: BLE001
                pass


async def test_vm_builds_the_services_environments_and_lists_their_kernels(os_hub, local_cloud):
    root = tempfile.mkdtemp(prefix="jb-vm-envs-", dir="/tmp")
    os.chmod(root, 0o755)
    port = free_port()
    c = Config()
    service_config(c, environments_root=os.path.join(root, "environments"))
    hub_config = {section: dict(values) for section, values in c.items()}
    hub_config["JupyterHub"]["bind_url"] = f"http://127.0.0.1:{port}/"
    service_url = f"http://127.0.0.1:{port}/services/broker/"
    app = None
    try:
        app, hub = await os_hub(hub_config=hub_config, environments_service_url=service_url,
                                environments_timeout=300, notebook_timeout=420)
        assert hub.base == f"http://127.0.0.1:{port}" and hub.prefix == "/"
        # the service is up behind the proxy
        deadline = time.monotonic() + 60
        while True:
            try:
                r = await hub.request("GET", "services/broker/api/health", user=None, timeout=5)
                if r.status_code == 200:
                    break
            except Exception:  # noqa: BLE001
                pass
            assert time.monotonic() < deadline, "broker service not up"
            await asyncio.sleep(0.5)

        r = await hub.request("POST", "services/broker/api/environments", user="admin",
                              json={"name": ENV, "display_name": "Six on VMs", "requirements": ["six"]})
        assert r.status_code == 201, r.text
        model = await wait_published(hub, ENV)
        assert model["current_build"] == 1
        lock = (await hub.request("GET", f"services/broker/api/environments/{ENV}/lockfile", user="admin")).text
        assert "six==" in lock

        # the notebook's own token is what the VM reads the service with
        hub.token("alice")  # makes the user
        spawner_scopes = app.users["alice"].spawner.server_token_scopes
        assert "custom:broker-environments:view" in spawner_scopes
        assert "access:services!service=broker" in spawner_scopes

        model = await hub.start_and_wait("alice", timeout=600)
        assert model and model["ready"], model

        # user_data carried the sync code, gzip'd, under the VM's package dir
        spawner = app.users["alice"].spawner
        assert spawner.environments_service_url == service_url
        import base64
        import gzip
        import yaml
        conn = local_cloud.connect("local-admin")
        ud_b64 = await asyncio.to_thread(
            lambda: conn.compute.get(f"/servers/{spawner.server_id}", microversion="2.3").json()["server"]
            .get("OS-EXT-SRV-ATTR:user_data"))
        ud = base64.b64decode(ud_b64).decode()
        assert len(ud_b64) < 65535
        files = {f["path"]: f for f in yaml.safe_load(ud)["write_files"]}
        sync_py = files[f"{VM_PKG_DIR}/jhub_broker/services/environments/sync.py"]
        assert sync_py["encoding"] == "gz+b64"
        assert b"def sync(" in gzip.decompress(base64.b64decode(sync_py["content"]))
        if shutil.which("cloud-init"):
            import subprocess
            path = os.path.join(root, "user-data")
            with open(path, "w") as f:
                f.write(ud)
            res = subprocess.run(["cloud-init", "schema", "--config-file", path], capture_output=True, text=True)
            assert res.returncode == 0, res.stdout + res.stderr

        r = await hub.request("GET", "user/alice/api/kernelspecs", user="alice")
        assert r.status_code == 200, r.text
        specs = r.json()["kernelspecs"]
        if KERNEL not in specs:
            console = await spawner.lifecycle.console_tail(spawner.server_id, 60)
            raise AssertionError(f"{KERNEL} not in {sorted(specs)}; the VM's console:\n{console}")
        assert specs[KERNEL]["spec"]["display_name"] == "Six on VMs"
        assert specs[KERNEL]["spec"]["argv"][0].startswith(VM_ROOT + "/"), specs[KERNEL]["spec"]["argv"]

        try:
            status, out, err = await run_in_kernel(
                hub, "alice", KERNEL,
                "import six, sys, os\n"
                "print('six', six.__version__, sys.prefix)\n"
                "print(open(os.path.join(sys.prefix, 'jhub-broker-lock.txt')).read())")
        except asyncio.TimeoutError:
            console = await spawner.lifecycle.console_tail(spawner.server_id, 40)
            raise AssertionError(f"the kernel did not answer; the VM's console:\n{console}") from None
        assert status == "ok", err
        first, _, vm_lock = out.partition("\n")
        assert first.startswith("six 1.") and f" {VM_ROOT}/{ENV}/" in first, out
        assert vm_lock.strip() == lock.strip(), "the VM built exactly the service's lockfile"
        await hub.stop_and_wait("alice")
    finally:
        if app is not None:
            await stop_services(app)
        shutil.rmtree(root, ignore_errors=True)

