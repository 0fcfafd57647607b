"""Failed spawns: the user reads what happened, and the cloud keeps nothing of the attempt."""
import asyncio

from .conftest import failed_spawn as _failed_spawn, tagged


async def _nothing_left(cloud):
    servers, fips, vols = await asyncio.to_thread(tagged, cloud)
    assert servers == [], [s.name for s in servers]
    assert fips == []
    assert all(v.status == "available" for v in vols)


async def test_quota_exceeded_message_with_numbers(os_hub, make_cloud):
    cloud = make_cloud({"quotas": {"instances": 0, "floatingip": 0}, "boot_delay": 0.2})
    app, hub = await os_hub(cloud=cloud, floating_ip_pool="public")
    # the hub reads the quota before it asks the cloud
    message = await _failed_spawn(hub, "quota-user")
    assert "m1.small does not fit the project's remaining quota: 0 servers left" in message, message
    # a quota the form does not know (floating IPs): the cloud refuses, and the user reads which step
    # failed, the cloud's own words, its status, and what to do
    await asyncio.to_thread(cloud.admin, "PUT", "/_emulator/boot", {"quotas": {"instances": 10}})
    message = await _failed_spawn(hub, "quota-user")
    assert "Giving your server an address failed: the cloud answered 409 Conflict: " in message, message
    assert "Quota exceeded for resources: ['floatingip']" in message
    assert "stop one of your other servers, or ask the project's manager for more quota" in message
    await _nothing_left(cloud)


async def test_image_needs_bigger_flavor(os_hub, local_cloud):
    app, hub = await os_hub(image_choices=["ubuntu-24.04-jupyter", "big-gpu-image"],
                            flavor_choices=["m1.small", "m1.large"])
    message = await _failed_spawn(hub, "flavor-user", options={"image": "big-gpu-image", "flavor": "m1.small"})
    assert "big-gpu-image" in message and "m1.small" in message and "bigger flavor" in message
    await _nothing_left(local_cloud)


async def test_not_offered_flavor_is_refused(os_hub, local_cloud):
    app, hub = await os_hub(flavor_choices=["m1.small"])
    message = await _failed_spawn(hub, "greedy-user", options={"flavor": "m1.large"})
    assert "not offered" in message and "m1.small" in message
    # a huge value with terminal escapes is not echoed back whole
    message = await _failed_spawn(hub, "greedy-user", options={"flavor": "\x1b[31m" + "x" * 100_000})
    assert "not offered" in message and "m1.small" in message
    assert len(message) < 500, len(message)
    assert "\x1b" not in message and "more characters" in message


async def test_no_valid_host_fault_reaches_user(os_hub, make_cloud):
    cloud = make_cloud({"boot_delay": 0.2, "boot_failures": [
        {"name": "unlucky", "message": "No valid host was found. There are not enough hosts available."}]})
    app, hub = await os_hub(cloud=cloud, floating_ip_pool="public")
    message = await _failed_spawn(hub, "unlucky")
    assert "No valid host was found" in message
    assert "no room" in message
    await _nothing_left(cloud)


async def test_boot_timeout_shows_console_tail(os_hub, local_cloud):
    app, hub = await os_hub(notebook_timeout=6, volume_size=0,
                            user_data_template_string="#!/bin/sh\necho 'boot: {{ hub_user }} has no notebook today'\n")
    message = await _failed_spawn(hub, "slowpoke")
    assert "did not answer within 6 s" in message
    assert "slowpoke has no notebook today" in message, message
    await _nothing_left(local_cloud)
