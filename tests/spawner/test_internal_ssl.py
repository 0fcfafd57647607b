"""``c.JupyterHub.internal_ssl`` with notebooks on VMs: a real hub (MockHub) and configurable-http-proxy
with internal TLS, OpenStackSpawner against the local cloud whose VMs run the notebook.

What an operator relies on: the user's server starts and is reached through the proxy over mutual
TLS; the VM's notebook port speaks only TLS and only to holders of the hub's client certificates;
the certificate names the VM's addresses; the private key travels only in the one-time bootstrap
answer (never in user_data) and nothing of it stays on the hub.
"""
import asyncio
import base64
import gzip
import ipaddress
import json
import os
import socket
import ssl
import stat

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jhub_broker.spawner import bootstrap

from .conftest import tagged

VM_SSL = "etc/jhub-broker/ssl"  # under the VM's directory in the local cloud


async def ssl_hub(os_hub, tmp_path, hub_settings=None, **overrides):
    """A hub with internal_ssl: hub, proxy (API and client side) and notebooks on mutual TLS."""
    certs = tmp_path / "internal-ssl"
    settings = {"internal_ssl": True, "internal_certs_location": str(certs), **(hub_settings or {})}
    app, hub = await os_hub(hub_config={"JupyterHub": settings}, **overrides)
    assert app.internal_ssl and app.proxy.api_url.startswith("https://")
    return app, hub, str(certs)


def tls_get(address, port, context, path):
    """A raw HTTP/1.1 GET over TLS: (server certificate DER, response bytes)."""
    with socket.create_connection((address, port), timeout=15) as sock:
        with context.wrap_socket(sock, server_hostname=address) as conn:
            der = conn.getpeercert(binary_form=True)
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {address}:{port}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return der, data
                data += chunk


def refused(call):
    """True when the connection fails or ends without an HTTP answer."""
    try:
        _, data = call()
    except (OSError, requests.ConnectionError):  # ssl.SSLError is an OSError
        return True
    return not data.startswith(b"HTTP/")


def user_data_texts(ud):
    """user_data and every write_files content in it, decoded (b64 / gz+b64)."""
    texts = [ud]
    for f in yaml.safe_load(ud).get("write_files", []):
        raw = f.get("content", "")
        if f.get("encoding") == "b64":
            texts.append(base64.b64decode(raw).decode(errors="replace"))
        elif f.get("encoding") == "gz+b64":
            texts.append(gzip.decompress(base64.b64decode(raw)).decode(errors="replace"))
        else:
            texts.append(raw)
    return texts


def files_containing(root, needle):
    hits = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


async def test_notebook_on_vm_speaks_mutual_tls_with_the_vms_addresses(os_hub, local_cloud, tmp_path):
    # trusted_alt_names name the hub (its internal certificate), never a VM
    app, hub, certs_dir = await ssl_hub(os_hub, tmp_path, hub_settings={"trusted_alt_names": ["DNS:hub.example.org"]},
                                        floating_ip_pool="public")
    model = await hub.start_and_wait("alice")
    assert model and model["ready"], model
    spawner = app.users["alice"].spawner

    # the hub proxies to the notebook on the VM (proxy -> notebook is mutual TLS)
    r = await hub.request("GET", "user/alice/api/status", user="alice")
    assert r.status_code == 200, r.text
    r = await hub.request("PUT", "user/alice/api/contents/tls.txt", user="alice",
                          data=json.dumps({"type": "file", "format": "text", "content": "over TLS"}))
    assert r.status_code in (200, 201), r.text

    # the server's URL is https, on the VM's floating IP
    servers, fips, _ = await asyncio.to_thread(tagged, local_cloud)
    assert len(servers) == 1 and len(fips) == 1
    floating = fips[0].floating_ip_address
    fixed = [a["addr"] for nets in servers[0].addresses.values() for a in nets
             if a.get("OS-EXT-IPS:type", "fixed") == "fixed"][0]
    assert spawner.server.url.startswith(f"https://{floating}:{spawner.notebook_port}/"), spawner.server.url
    assert app.users["alice"].orm_spawners[""].server.proto == "https"
    port = spawner.notebook_port

    # with the hub's client certificate the notebook answers; the certificate verifies against the hub's
    # CAs for the floating IP and names the fixed IP too
    hub_ctx = ssl.create_default_context(cafile=app.internal_ssl_ca)
    hub_ctx.load_cert_chain(app.internal_ssl_cert, app.internal_ssl_key)
    der, data = await asyncio.to_thread(tls_get, floating, port, hub_ctx, spawner.server.base_url + "api")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address(floating), ipaddress.ip_address(fixed)} <= ips, sans
    assert ipaddress.ip_address("127.0.0.1") not in ips, "a VM's certificate must not claim the hub's loopback"
    assert sans.get_values_for_type(x509.DNSName) == [], "nor the hub's names"
    with open(os.path.join(certs_dir, "notebooks-ca", "notebooks-ca.crt"), "rb") as f:
        assert cert.issuer == x509.load_pem_x509_certificate(f.read()).subject

    # plain http, and TLS without a client certificate, are refused
    assert await asyncio.to_thread(refused, lambda: (None, requests.get(
        f"http://{floating}:{port}{spawner.server.base_url}api", timeout=15).content))
    no_client_cert = ssl.create_default_context(cafile=app.internal_ssl_ca)
    assert await asyncio.to_thread(refused, lambda: tls_get(floating, port, no_client_cert,
                                                            spawner.server.base_url + "api"))

    # the VM holds key, certificate and trust bundle where the notebook's env says, readable only by its user
    vm_dir = os.path.join(local_cloud.state_dir, "vms", spawner.server_id)
    with open(os.path.join(vm_dir, "etc/jhub-broker/notebook.env.json")) as f:
        env = json.load(f)
    assert env["JUPYTERHUB_SSL_KEYFILE"] == "/" + VM_SSL + "/key.pem"
    assert env["JUPYTERHUB_SSL_CERTFILE"] == "/" + VM_SSL + "/cert.pem"
    assert env["JUPYTERHUB_SSL_CLIENT_CA"] == "/" + VM_SSL + "/ca.pem"
    assert env["JUPYTERHUB_API_URL"].startswith("https://")
    key_path = os.path.join(vm_dir, VM_SSL, "key.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with open(key_path, "rb") as f:
        key_pem = f.read()
    key = serialization.load_pem_private_key(key_pem, None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()
    with open(os.path.join(vm_dir, VM_SSL, "ca.pem")) as f, open(app.internal_trust_bundles["notebooks-ca"]) as g:
        assert f.read() == g.read(), "the notebook trusts exactly the hub's notebooks-ca bundle (hub + proxy)"

    # user_data (as the cloud keeps it) carries no key, not even inside its encoded files
    conn = local_cloud.connect("local-admin")
    ud_b64 = await asyncio.to_thread(
        lambda: conn.compute.get(f"/servers/{spawner.server_id}", microversion="2.3").json()["server"]
        ["OS-EXT-SRV-ATTR:user_data"])
    key_body = b"".join(key_pem.strip().splitlines()[1:-1]).decode()
    for text in user_data_texts(base64.b64decode(ud_b64).decode()):
        assert "PRIVATE KEY" not in text
        assert key_body[:64] not in text.replace("\n", "")

    # the hub's disk never had it; the bootstrap secret is spent
    assert files_containing(certs_dir, key_body[:64].encode()) == []
    with open(os.path.join(certs_dir, "certipy.json")) as f:
        assert not [name for name in json.load(f) if name.startswith("user-")]
    assert not bootstrap.registry.pending("alice/")

    await hub.stop_and_wait("alice")
    assert files_containing(certs_dir, key_body[:64].encode()) == []
    assert not [d for d in os.listdir(certs_dir) if d.startswith("user-")], os.listdir(certs_dir)
    assert not bootstrap.registry.pending("alice/")
    servers, fips, _ = await asyncio.to_thread(tagged, local_cloud)
    assert servers == [] and fips == []


async def test_fixed_ip_named_server_and_held_bootstrap(os_hub, local_cloud, tmp_path):
    app, hub, certs_dir = await ssl_hub(os_hub, tmp_path, hub_settings={"allow_named_servers": True},
                                        volume_size=0, ssl_alt_names=["DNS:notebook.example.org"])

    # a secret issued while the VM's settings are incomplete (certificate not signed yet) is not spent:
    # the VM is told to retry, through the public side of the proxy as VMs redeem with internal_ssl
    bootstrap.ensure_registered()
    url = hub.base + app.hub.base_url + "api/jhub-broker/bootstrap"
    secret = bootstrap.registry.issue("probe/", {"env": {}}, ttl=60, held=True)
    r = await asyncio.to_thread(requests.post, url, json={"secret": secret}, timeout=15)
    assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.text)
    bootstrap.registry.release("probe/", ssl={"cert": "c"})
    r = await asyncio.to_thread(requests.post, url, json={"secret": secret}, timeout=15)
    assert r.status_code == 200 and r.json()["ssl"] == {"cert": "c"}
    r = await asyncio.to_thread(requests.post, url, json={"secret": secret}, timeout=15)
    assert r.status_code == 403

    model = await hub.start_and_wait("bob", server="lab")
    assert model and model["ready"], model
    r = await hub.request("GET", "user/bob/lab/api/status", user="bob")
    assert r.status_code == 200, r.text
    spawner = app.users["bob"].spawners["lab"]
    servers, fips, _ = await asyncio.to_thread(tagged, local_cloud)
    assert len(servers) == 1 and fips == []
    assert spawner.server.url.startswith(f"https://{spawner.address}:")
    ctx = ssl.create_default_context(cafile=app.internal_ssl_ca)
    ctx.load_cert_chain(app.internal_ssl_cert, app.internal_ssl_key)
    der, data = await asyncio.to_thread(tls_get, spawner.address, spawner.notebook_port, ctx,
                                        spawner.server.base_url + "api")
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    cert = x509.load_der_x509_certificate(der)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(spawner.address)]
    assert sans.get_values_for_type(x509.DNSName) == ["notebook.example.org"]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "user-bob-lab"
    await hub.stop_and_wait("bob", server="lab")
    assert not bootstrap.registry.pending("bob/lab")


async def test_failed_spawn_keeps_no_key(os_hub, local_cloud, tmp_path):
    # the VM never redeems its secret: the signed key waits in the held-then-released payload
    # until the spawn fails, and is dropped with it
    app, hub, certs_dir = await ssl_hub(os_hub, tmp_path, notebook_timeout=8, volume_size=0,
                                        user_data_template_string="#!/bin/sh\necho 'no agent on this VM'\n")
    hub.token("carol")
    r = await hub.api("POST", "users/carol/server")
    assert r.status_code in (202, 500), r.text
    model = await hub.wait_ready("carol", timeout=180)
    assert model is None or not model.get("ready")
    events = await hub.progress_events("carol")
    # it failed waiting for the notebook: after the address was assigned and the certificate signed
    assert events and "did not answer within 8 s" in events[-1]["message"], events
    assert not bootstrap.registry.pending("carol/"), "the failed spawn's bootstrap payload (with the key) is gone"
    assert not [d for d in os.listdir(certs_dir) if d.startswith("user-")]
    servers, fips, _ = await asyncio.to_thread(tagged, local_cloud)
    assert servers == []
