"""Docker-host VMs of the local cloud: a real dockerd started by the VM's own cloud-init, containers from the
image baked without a registry, volumes hot-plugged into the running VM, nothing left once the VM is deleted.

All through the real openstacksdk against the local cloud and the real Docker SDK against the VM's dockerd
(mutual TLS on the VM's address). One docker-host VM serves the module; the last test deletes it.
"""
import datetime
import ipaddress
import os
import time
import urllib.error
import urllib.request

import pytest

from jhub_broker.emulators.openstack.vm import dockerhost

pytestmark = pytest.mark.skipif(not dockerhost.docker_installed(),
                                reason="Debian's docker.io (dockerd) is not installed: scripts/setup.sh installs it")

IMAGE_TAR = os.path.join(dockerhost.IMAGES_DIR, "jhub-base.tar")
IMAGE = "jhub-base"
VENV = "/opt/jhub-broker/singleuser"  # the docker-host image is pre-baked: containers may bind its venv
DOCKER_PORT = 2376
WEB_PORT = 8765
CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN = 12, 13, 21


def wait(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def tls_files(tmp, address):
    """A CA, a server certificate for the VM's address and a client certificate (PEM texts / paths)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name, key, issuer, issuer_key, ca=False, san=None, usage=None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode()

    ca_key, srv_key, cli_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test docker CA")])
    ca = cert("test docker CA", ca_key, ca_name, ca_key, ca=True)
    srv = cert(address, srv_key, ca_name, ca_key, san=[x509.IPAddress(ipaddress.ip_address(address))],
               usage=ExtendedKeyUsageOID.SERVER_AUTH)
    cli = cert("hub", cli_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pem = {"ca": ca.public_bytes(serialization.Encoding.PEM).decode(),
           "server_cert": srv.public_bytes(serialization.Encoding.PEM).decode(), "server_key": pem_key(srv_key),
           "client_cert": cli.public_bytes(serialization.Encoding.PEM).decode(), "client_key": pem_key(cli_key)}
    paths = {}
    for name in ("ca", "client_cert", "client_key"):
        paths[name] = str(tmp / f"{name}.pem")
        with open(paths[name], "w") as f:
            f.write(pem[name])
    return pem, paths


def user_data(pem):
    """cloud-config of a docker-host VM: dockerd on the VM's address with mutual TLS, then the image imported.

    (The keys travel in user_data only in this test; the shared pool delivers them through the bootstrap
    exchange.)"""
    def indent(text):
        return "\n".join("      " + line for line in text.strip().splitlines())

    tls = "--tlsverify --tlscacert=/etc/docker/tls/ca.pem --tlscert=/etc/docker/tls/cert.pem " \
          "--tlskey=/etc/docker/tls/key.pem"
    dockerd = f"dockerd -H unix:///var/run/docker.sock -H tcp://$(cat /etc/jhub-broker-vm-address):{DOCKER_PORT} {tls}"
    # /usr/bin/docker is docker.io's client; /usr/local/bin/docker (first on PATH) may be an unrelated one
    ready = "for i in $(seq 150); do /usr/bin/docker info >/dev/null 2>&1 && break; sleep 0.2; done"
    return f"""#cloud-config
write_files:
  - path: /etc/docker/tls/ca.pem
    content: |
{indent(pem["ca"])}
  - path: /etc/docker/tls/cert.pem
    content: |
{indent(pem["server_cert"])}
  - path: /etc/docker/tls/key.pem
    permissions: '0600'
    content: |
{indent(pem["server_key"])}
runcmd:
  - [sh, -c, 'grep CapEff /proc/self/status | sed "s/^/caps: /"']
  - [sh, -c, '{dockerd} >/var/log/dockerd.log 2>&1 &']
  - [sh, -c, '{ready}; /usr/bin/docker import {IMAGE_TAR} {IMAGE}']
"""


def capabilities(console):
    line = next((ln for ln in console.splitlines() if ln.startswith("caps: CapEff:")), None)
    assert line, "the VM printed no capabilities:\n" + console[-2000:]
    return int(line.split()[-1], 16)


def fixed_ip(server):
    return next(a["addr"] for addrs in server.addresses.values() for a in addrs
                if a.get("OS-EXT-IPS:type", "fixed") == "fixed")


def cgroup_dirs(server_id):
    out = []
    for top, dirs, _ in os.walk("/sys/fs/cgroup"):
        if os.path.basename(top) == f"jhub-vm-{server_id}":
            out.append(top)
            dirs[:] = []
    return out


def processes_in(dirs):
    """{pid: (name, start time)} of the processes in these cgroups and below."""
    out = {}
    for top in dirs:
        for d, _, _ in os.walk(top):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                ident = _ident(pid)
                if ident:
                    out[pid] = ident
    return out


def _ident(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    return name, stat[stat.rindex(")") + 2:].split()[19]


def answers(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except (OSError, urllib.error.URLError):
        return None


@pytest.fixture(scope="module")
def conn(local_cloud):
    return local_cloud.connect()


@pytest.fixture(scope="module")
def docker_host(conn, tmp_path_factory):
    """A VM of the docker-host image, booted on a port made first (its certificate names the address)."""
    assert os.path.isfile(IMAGE_TAR), f"{IMAGE_TAR} is missing: run scripts/bake-container-image.sh (setup does)"
    import docker

    image = conn.image.find_image("debian-docker-host", ignore_missing=False)
    assert image.properties.get(dockerhost.PROPERTY) == "true"
    net = conn.network.find_network("private")
    port = conn.network.create_port(network_id=net.id, name="docker-host-port")
    address = port.fixed_ips[0]["ip_address"]
    pem, paths = tls_files(tmp_path_factory.mktemp("docker-tls"), address)
    flavor = conn.compute.find_flavor("m1.small")
    server = conn.compute.create_server(name="docker-host-1", image_id=image.id, flavor_id=flavor.id,
                                        networks=[{"port": port.id}], user_data=_b64(user_data(pem)))
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120, interval=0.5)
    # requests (under the Docker SDK) takes REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE over the CA given to it
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("REQUESTS_CA_BUNDLE", raising=False)
        mp.delenv("CURL_CA_BUNDLE", raising=False)
        client = docker.DockerClient(base_url=f"https://{address}:{DOCKER_PORT}", timeout=60, version="1.41",
                                     tls=docker.tls.TLSConfig(client_cert=(paths["client_cert"], paths["client_key"]),
                                                              ca_cert=paths["ca"], verify=True))
        try:
            wait(lambda: _pings(client), 60, "the VM's dockerd to answer on " + address)
            wait(lambda: _has_image(client), 180, f"the VM's cloud-init to import {IMAGE}")
        except AssertionError as e:
            raise AssertionError(f"{e}; console:\n" + conn.compute.get_server_console_output(server)["output"][-3000:])
        yield server, address, client
        client.close()
    if conn.compute.find_server(server.id):
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)
    conn.network.delete_port(port, ignore_missing=True)


def _b64(text):
    import base64
    return base64.b64encode(text.encode()).decode()


def _pings(client):
    try:
        return client.ping()
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def _has_image(client):
    import docker
    try:
        return client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        return None


def test_docker_host_runs_containers_from_the_baked_image(conn, docker_host):
    server, address, client = docker_host
    console = conn.compute.get_server_console_output(server)["output"]
    assert capabilities(console) & (1 << CAP_SYS_ADMIN), "a docker-host VM needs CAP_SYS_ADMIN for dockerd"
    assert client.info()["Name"] == "docker-host-1"
    web = client.containers.run(IMAGE, [f"{VENV}/bin/python", "-m", "http.server", "--bind", address, str(WEB_PORT)],
                                network_mode="host", detach=True, name="web",
                                volumes={VENV: {"bind": VENV, "mode": "ro"}})
    wait(lambda: answers(f"http://{address}:{WEB_PORT}/") == 200, 60,
         "the container's web server on the VM's address")
    assert client.containers.get("web").status == "running"
    assert web.exec_run(["id", "-un", "1000"]).output.decode().strip() == "jovyan"


def test_containers_get_limits_and_fewer_capabilities(docker_host):
    """What a notebook container will be given works inside the VM: CPU and memory limits (the VM's own
    cgroup), NET_RAW dropped, no-new-privileges."""
    _, _, client = docker_host
    hog = client.containers.run(IMAGE, ["python3", "-c", "b = b'x' * (512 * 2**20)"], detach=True,
                                mem_limit="64m", nano_cpus=500_000_000)
    assert hog.wait(timeout=60)["StatusCode"] == 137
    hog.reload()
    assert hog.attrs["State"]["OOMKilled"]
    hog.remove()
    caps = client.containers.run(IMAGE, ["grep", "CapEff", "/proc/self/status"], remove=True,
                                 cap_drop=["NET_RAW"], security_opt=["no-new-privileges"])
    assert not int(caps.split()[-1], 16) & (1 << CAP_NET_RAW)


def test_volume_hot_attach_and_detach(conn, docker_host):
    server, _, client = docker_host
    vol = conn.block_storage.create_volume(size=1, name="hot-plug")
    conn.block_storage.wait_for_status(vol, status="available", wait=30, interval=0.2)
    disk = f"/dev/disk/by-id/virtio-{vol.id[:20]}"

    def vm_disks():
        out = client.containers.run(IMAGE, ["ls", "/disks"], remove=True,
                                    volumes={"/dev/disk/by-id": {"bind": "/disks", "mode": "ro"}})
        return out.decode().split()

    def attach():
        conn.compute.create_volume_attachment(server, volume=vol)
        conn.block_storage.wait_for_status(vol, status="in-use", wait=30, interval=0.2)

    def detach():
        conn.compute.delete_volume_attachment(server, vol)
        conn.block_storage.wait_for_status(vol, status="available", wait=30, interval=0.2)

    assert disk.rsplit("/", 1)[1] not in vm_disks()
    attach()
    assert disk.rsplit("/", 1)[1] in vm_disks()
    keeper = client.containers.run(IMAGE, ["sleep", "infinity"], detach=True, network_mode="host",
                                   volumes={disk: {"bind": "/home/jovyan", "mode": "rw"}})
    wrote = keeper.exec_run(["sh", "-c", "echo kept > /home/jovyan/note && cat /home/jovyan/note"])
    assert (wrote.exit_code, wrote.output.decode().strip()) == (0, "kept")

    detach()
    assert disk.rsplit("/", 1)[1] not in vm_disks()
    gone = keeper.exec_run(["cat", "/home/jovyan/note"])
    assert gone.exit_code != 0, "the detached volume is still seen by a container that bind-mounted it"

    attach()  # the data lives on the volume, not in the VM
    again = client.containers.run(IMAGE, ["cat", "/d/note"], remove=True, volumes={disk: {"bind": "/d", "mode": "ro"}})
    assert again.decode().strip() == "kept"
    keeper.remove(force=True)
    detach()
    conn.block_storage.delete_volume(vol)


def test_plain_vm_sees_volumes_come_and_go(conn):
    """Any VM: a volume attached at boot is at /dev/disk/by-id and at its cloud-config ``mounts`` target; one
    hot-attached appears; detaching the first makes it vanish from both places. The VM reports what it
    sees on its console."""
    image = conn.image.find_image("ubuntu-24.04", ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.small")
    first, second = (conn.block_storage.create_volume(size=1, name=n) for n in ("boot-vol", "hot-vol"))
    for vol in (first, second):
        conn.block_storage.wait_for_status(vol, status="available", wait=30, interval=0.2)
    watch = ("while :; do s=$(ls /dev/disk/by-id /data 2>&1 | tr \"\\n\" \" \"); "
             "[ \"$s\" != \"$p\" ] && echo \"seen: $s\"; p=$s; sleep 0.2; done")
    ud = f"""#cloud-config
mounts:
  - [/dev/vdb, /data]
runcmd:
  - [sh, -c, 'echo hi > /data/hello']
  - [sh, -c, '{watch} &']
"""
    server = conn.compute.create_server(
        name="plain-disks", flavor_id=flavor.id, image_id=image.id, networks="auto", user_data=_b64(ud),
        block_device_mapping_v2=[{"boot_index": 0, "uuid": image.id, "source_type": "image",
                                  "destination_type": "local", "delete_on_termination": True},
                                 {"boot_index": -1, "uuid": first.id, "source_type": "volume",
                                  "destination_type": "volume", "device_name": "/dev/vdb"}])
    a, b = f"virtio-{first.id[:20]}", f"virtio-{second.id[:20]}"

    def seen(pred, what):
        def last():
            lines = [ln for ln in conn.compute.get_server_console_output(server)["output"].splitlines()
                     if ln.startswith("seen: ")]
            return lines and pred(lines[-1].split()) and lines[-1]
        return wait(last, 60, what)

    try:
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120, interval=0.5)
        seen(lambda w: a in w and "hello" in w and b not in w, "the boot volume at by-id and /data")
        conn.compute.create_volume_attachment(server, volume=second)
        seen(lambda w: a in w and b in w, "the hot-attached volume")
        conn.compute.delete_volume_attachment(server, first)
        conn.block_storage.wait_for_status(first, status="available", wait=30, interval=0.2)
        seen(lambda w: a not in w and b in w and "hello" not in w, "the detached volume gone from by-id and /data")
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)
        for vol in (first, second):
            conn.block_storage.wait_for_status(vol, status="available", wait=30, interval=0.2)
            conn.block_storage.delete_volume(vol)


def test_normal_vm_gets_no_docker_rights(conn):
    image = conn.image.find_image("ubuntu-24.04", ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.small")
    net = conn.network.find_network("private")
    server = conn.compute.create_server(
        name="plain", image_id=image.id, flavor_id=flavor.id, networks=[{"uuid": net.id}],
        user_data=_b64("#cloud-config\nruncmd:\n  - [sh, -c, 'grep CapEff /proc/self/status | sed \"s/^/caps: /\"']\n"))
    try:
        server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120, interval=0.5)
        console = wait(lambda: (lambda out: "caps: CapEff:" in out and out)(
            conn.compute.get_server_console_output(server)["output"]), 60, "the VM's capabilities on its console")
        caps = capabilities(console)
        assert not caps & (1 << CAP_SYS_ADMIN) and not caps & (1 << CAP_NET_ADMIN)
        assert not cgroup_dirs(server.id), "only docker-host VMs get a cgroup of their own"
    finally:
        conn.compute.delete_server(server)
        conn.compute.wait_for_delete(server, wait=60)


def test_deleting_the_host_leaves_nothing_behind(conn, docker_host):
    server, address, client = docker_host
    client.containers.run(IMAGE, ["sleep", "infinity"], detach=True)
    dirs = cgroup_dirs(server.id)
    assert dirs, "the docker-host VM has no cgroup of its own"
    procs = processes_in(dirs)
    names = {name for name, _ in procs.values()}
    assert {"dockerd", "containerd", "containerd-shim", "sleep"} <= names, names
    assert answers(f"http://{address}:{WEB_PORT}/") == 200

    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=60)

    def mounts():
        with open("/proc/self/mountinfo") as f:
            return [line for line in f if server.id in line]

    wait(lambda: not [p for p, ident in procs.items() if _ident(p) == ident], 30,
         "the VM's processes (dockerd, containerd, shims, containers) to be gone")
    assert not cgroup_dirs(server.id)
    assert not mounts()
    assert answers(f"http://{address}:{WEB_PORT}/") is None
