"""A user's notebook on a VM of its own, end to end through a real hub and proxy."""
import asyncio
import json

from .conftest import tagged


async def test_start_write_stop_start_keeps_files(os_hub, local_cloud):
    app, hub = await os_hub(floating_ip_pool="public")
    model = await hub.start_and_wait("alice")
    assert model and model["ready"], model

    # the hub proxies to the notebook server on the VM
    r = await hub.request("GET", "user/alice/api/status", user="alice")
    assert r.status_code == 200, r.text
    # the VM got a floating IP from the pool, and nothing else of the hub's is running
    servers, fips, vols = await asyncio.to_thread(tagged, local_cloud)
    assert len(servers) == 1 and servers[0].status == "ACTIVE"
    assert len(fips) == 1 and fips[0].floating_ip_address.startswith(local_cloud.floating_prefix)
    assert len(vols) == 1 and vols[0].status == "in-use"
    # tags and metadata for accounting
    assert servers[0].metadata["jhub_broker_user"] == "alice"

    r = await hub.request("PUT", "user/alice/api/contents/notes.txt", user="alice",
                          data=json.dumps({"type": "file", "format": "text", "content": "kept on the volume"}))
    assert r.status_code in (200, 201), r.text

    await hub.stop_and_wait("alice")
    servers, fips, vols = await asyncio.to_thread(tagged, local_cloud)
    assert servers == [] and fips == [], "stop left a server or floating IP behind"
    assert len(vols) == 1 and vols[0].status == "available", "the data volume must outlive the server"

    model = await hub.start_and_wait("alice")
    assert model["ready"]
    r = await hub.request("GET", "user/alice/api/contents/notes.txt", user="alice")
    assert r.status_code == 200, r.text
    assert r.json()["content"] == "kept on the volume"
    await hub.stop_and_wait("alice")
