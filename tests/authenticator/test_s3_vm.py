"""S3 grants from inside a real ``jupyterhub-singleuser`` on an OpenStackSpawner VM of the local cloud.

alice logs in through the Check-in stand-in (real OIDC code flow); her groups grant read on ``ref-data``
(vo.example.eu) and write on ``team-analysis`` (vo.example.eu:analysis); ``ifremer-private`` belongs to a
group she is not in. Her server is spawned through the hub's REST API on a VM whose Python is the pre-baked
image venv (``scripts/bake-image.sh``); code runs in a kernel on the VM through the notebook's websocket API
(behind the real proxy) and talks to moto S3 with IAM auth enforced, using the static backend's per-group keys.
"""
import asyncio
import json
import os
import shutil
import tempfile

import pytest
import yaml

from jhub_broker.authenticator.s3.grants import resolve_grants
from jhub_broker.authenticator.s3.policy import policy_for
from jhub_broker.authenticator.rules import AccessRules
from jhub_broker.emulators.s3 import MotoS3
from jhub_broker.spawner.userdata import S3_HELPER_NAME, VM_BIN_DIR
from tests.authenticator.conftest import hub_config
from tests.spawner.conftest import os_hub  # noqa: F401 - the hub factory fixture
from tests.spawner.test_vm_environments import run_in_kernel

VM_VENV = "/opt/jhub-broker/singleuser"
USER = "alice@egi.eu"
# sorted by bucket, alice's grants are ref-data, team-analysis: her default profile is ref-data's key
GRANTS = [
    {"bucket": "ref-data", "level": "read", "groups": ["vo.example.eu"]},
    {"bucket": "team-analysis", "level": "write", "groups": ["vo.example.eu:analysis"]},
    {"bucket": "ifremer-private", "level": "write", "groups": ["vo.example.eu:ifremer"]},
]

KERNEL_CODE = r'''
import importlib.util, json, os, shutil, socket, sys
import boto3, botocore.exceptions, s3fs

out = {"python": sys.executable, "host": socket.gethostname(), "helper": shutil.which("jhub-broker-s3-credentials"),
       "jhub_broker_importable": importlib.util.find_spec("jhub_broker") is not None,
       "aws_config_file": os.environ.get("AWS_CONFIG_FILE")}
with open(os.environ["AWS_CONFIG_FILE"]) as f:
    out["aws_config"] = f.read()

def done(_):
    return None

def attempt(fn):
    try:
        r = fn()
        return True if r is None else r
    except botocore.exceptions.ClientError as e:
        return e.response["Error"]["Code"]
    except PermissionError:
        return "PermissionError"

# default profile, no arguments: container credentials served by the hub
s3 = boto3.client("s3")
out["default_method"] = boto3.Session().get_credentials().method
out["boto3_read"] = attempt(lambda: s3.get_object(Bucket="ref-data", Key="README.txt")["Body"].read().decode())
out["boto3_write_read_bucket"] = attempt(lambda: done(s3.put_object(Bucket="ref-data", Key="from-vm.txt", Body=b"no")))
out["boto3_read_other_group"] = attempt(lambda: done(s3.get_object(Bucket="ifremer-private", Key="README.txt")))
fs = s3fs.S3FileSystem()
out["s3fs_ls"] = attempt(lambda: sorted(fs.ls("ref-data")))
out["s3fs_read"] = attempt(lambda: fs.cat("ref-data/README.txt").decode())
out["s3fs_write_read_bucket"] = attempt(lambda: done(fs.pipe("ref-data/s3fs-vm.txt", b"no")))
out["s3fs_read_other_group"] = attempt(lambda: done(fs.cat("ifremer-private/README.txt")))

# named profile through credential_process (the helper shipped in user_data)
named = boto3.Session(profile_name="team-analysis")
out["named_method"] = named.get_credentials().method
w = named.client("s3")
out["named_write"] = attempt(lambda: done(w.put_object(Bucket="team-analysis", Key="from-vm.txt", Body=b"written on the VM")))
out["named_read_back"] = attempt(lambda: w.get_object(Bucket="team-analysis", Key="from-vm.txt")["Body"].read().decode())
out["named_write_other_group"] = attempt(lambda: done(w.put_object(Bucket="ifremer-private", Key="x.txt", Body=b"no")))
fsw = s3fs.S3FileSystem(profile="team-analysis")
out["s3fs_named_write"] = attempt(lambda: done(fsw.pipe("team-analysis/s3fs-vm.txt", b"s3fs on the VM")))
out["s3fs_named_read_other_group"] = attempt(lambda: done(fsw.cat("ifremer-private/README.txt")))
print("RESULT " + json.dumps(out))
'''


@pytest.fixture(scope="module")
def moto_static(tmp_path_factory):
    """moto with IAM auth on: one IAM user per group, whose policy is exactly that group's grants."""
    m = MotoS3(str(tmp_path_factory.mktemp("moto-vm"))).start()
    try:
        users = {}
        for g in GRANTS:
            group = g["groups"][0]
            users["grp-" + group.replace(":", "-")] = policy_for(resolve_grants([g], {group}, (), AccessRules(), "s3"))
        keys = m.setup([g["bucket"] for g in GRANTS], users)
        m.enforce_auth()
        path = tmp_path_factory.mktemp("vm-secrets") / "s3-keys.yaml"
        path.write_text(yaml.safe_dump({"keys": {g["groups"][0]: keys["grp-" + g["groups"][0].replace(":", "-")]
                                                 for g in GRANTS}}))
        m.secrets_file = str(path)
    except BaseException:
        m.stop()
        raise
    yield m
    m.stop()


@pytest.fixture
async def vm_checkin_hub(os_hub, checkin, hub_port):
    """A real hub: CheckinAuthenticator (Check-in stand-in) + OpenStackSpawner (local cloud) + real proxy."""
    async def start(**auth):
        return await os_hub(hub_config=hub_config(checkin, hub_port, **auth), notebook_timeout=300)
    return start


async def test_kernel_on_a_vm_reaches_exactly_the_granted_buckets(vm_checkin_hub, browser_login, moto_static,
                                                                  local_cloud):
    if not os.access(os.path.join(VM_VENV, "bin", "python"), os.X_OK):
        pytest.skip("the pre-baked image venv is missing: run scripts/bake-image.sh")
    app, hub = await vm_checkin_hub(
        s3_endpoints={"s3": {"url": moto_static.url, "backend": "static", "region": "us-east-1",
                             "secrets_file": moto_static.secrets_file}},
        s3_grants=GRANTS)
    _, r = await browser_login("alice", "alice-pw")
    assert r.status_code == 200, r.text[:500]
    user = app.users[USER]
    assert {g.name for g in user.groups} == {"vo.example.eu", "vo.example.eu:analysis"}

    model = await hub.start_and_wait(USER, timeout=600)
    spawner = user.spawner
    if not (model and model["ready"]):
        console = await spawner.lifecycle.console_tail(spawner.server_id, 60) if spawner.server_id else ""
        raise AssertionError(f"alice's VM did not start: {model}\n{console}")
    assert spawner.environment["JHUB_BROKER_S3_PROFILES"].split() == ["default", "ref-data", "team-analysis"]
    # the OpenStackSpawner asked for the S3 scope: the VM's token may fetch alice's credentials, and only hers
    from jupyterhub import orm
    from jupyterhub.scopes import get_scopes_for
    held = get_scopes_for(orm.APIToken.find(app.db, spawner.api_token))
    assert f"custom:s3-credentials!user={USER}" in held, held

    # user_data carried the helper (no credentials: those come from the hub at run time)
    import base64
    import gzip
    conn = local_cloud.connect("local-admin")
    ud = base64.b64decode(await asyncio.to_thread(
        lambda: conn.compute.get(f"/servers/{spawner.server_id}", microversion="2.3").json()["server"]
        ["OS-EXT-SRV-ATTR:user_data"])).decode()
    files = {f["path"]: f for f in yaml.safe_load(ud)["write_files"]}
    helper = files[f"{VM_BIN_DIR}/{S3_HELPER_NAME}"]
    assert helper["permissions"] == "0755"
    assert b"def fetch(profile)" in gzip.decompress(base64.b64decode(helper["content"]))
    secrets = [k["secret_access_key"] for k in yaml.safe_load(open(moto_static.secrets_file))["keys"].values()]
    assert not [s for s in secrets if s in ud]
    if shutil.which("cloud-init"):
        import subprocess
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(ud)
            f.flush()
            res = subprocess.run(["cloud-init", "schema", "--config-file", f.name], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr

    try:
        status, out, err = await run_in_kernel(hub, USER, "python3", KERNEL_CODE)
    except asyncio.TimeoutError:
        console = await spawner.lifecycle.console_tail(spawner.server_id, 40)
        raise AssertionError(f"the kernel did not answer; the VM's console:\n{console}") from None
    assert status == "ok", err + out
    res = json.loads(out.split("RESULT ", 1)[1])

    # it ran on the VM, in the image's venv, with nothing of jhub_broker importable
    assert res["python"].startswith(VM_VENV + "/"), res["python"]
    assert res["host"] == spawner._server_name(), res["host"]
    assert res["jhub_broker_importable"] is False
    assert res["helper"] == f"{VM_BIN_DIR}/{S3_HELPER_NAME}"
    assert res["aws_config_file"] == "/etc/jhub-broker/aws-config"
    assert "credential_process = jhub-broker-s3-credentials --profile team-analysis" in res["aws_config"]
    assert not [s for s in secrets if s in res["aws_config"]]

    # default profile (container credentials from the hub): read ref-data with boto3 and s3fs, nothing more
    assert res["default_method"] == "container-role"
    assert res["boto3_read"] == "data in ref-data"
    assert res["boto3_write_read_bucket"] == "AccessDenied"
    assert res["boto3_read_other_group"] == "AccessDenied"
    assert res["s3fs_ls"] == ["ref-data/README.txt"]
    assert res["s3fs_read"] == "data in ref-data"
    assert res["s3fs_write_read_bucket"] == "PermissionError"
    assert res["s3fs_read_other_group"] == "PermissionError"
    # named profile through credential_process: write team-analysis, still not another group's bucket
    assert res["named_method"] == "custom-process"
    assert res["named_write"] is True
    assert res["named_read_back"] == "written on the VM"
    assert res["named_write_other_group"] == "AccessDenied"
    assert res["s3fs_named_write"] is True
    assert res["s3fs_named_read_other_group"] == "PermissionError"

    # what S3 holds, seen with the operator's keys: only the granted writes landed
    admin = moto_static.client("s3", **moto_static.admin_keys)
    keys = {b: sorted(o["Key"] for o in admin.list_objects_v2(Bucket=b).get("Contents", []))
            for b in ("ref-data", "team-analysis", "ifremer-private")}
    assert keys == {"ref-data": ["README.txt"], "team-analysis": ["README.txt", "from-vm.txt", "s3fs-vm.txt"],
                    "ifremer-private": ["README.txt"]}

    await hub.stop_and_wait(USER)
    assert "AWS_CONTAINER_CREDENTIALS_FULL_URI" not in spawner.environment
    assert not [k for k in app.authenticator.s3_broker._cache if k[0] == USER]
