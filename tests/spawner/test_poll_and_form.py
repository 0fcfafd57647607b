"""poll() under cloud trouble, and the options form a user sees."""
import asyncio

from jhub_broker.spawner.servercache import ServerCache


async def test_transient_errors_never_mark_running_server_dead(os_hub, local_cloud):
    app, hub = await os_hub()
    assert (await hub.start_and_wait("henry"))["ready"]
    spawner = app.users["henry"].spawner
    cache = ServerCache.shared(spawner.adapter, spawner.lifecycle.tag)
    try:
        # the cloud answers 503 to every server list for a while
        local_cloud.admin("POST", "/_emulator/faults", {"path": r"/servers/detail", "status": 503, "count": 40})
        rounds_before = cache.rounds
        for _ in range(3):
            assert await spawner.poll() is None, "a 503 from the cloud must not mark the server stopped"
        assert cache.rounds == rounds_before, "the failing lists should not count as fresh views"
    finally:
        local_cloud.admin("DELETE", "/_emulator/faults")
    assert await spawner.poll() is None
    # the server really disappearing is noticed
    conn = local_cloud.connect()
    await asyncio.to_thread(conn.compute.delete_server, spawner.server_id)
    await asyncio.to_thread(conn.compute.wait_for_delete, conn.compute.get_server(spawner.server_id),
                            interval=0.2, wait=30)
    for _ in range(20):
        if await spawner.poll() == 1:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("poll() did not notice the server was deleted")


async def test_options_form_disables_small_flavors_and_shows_quota(os_hub, local_cloud):
    app, hub = await os_hub(image="big-gpu-image", image_choices=["big-gpu-image", "ubuntu-24.04-jupyter"],
                            flavor_choices=["m1.small", "m1.large"], flavor="m1.large")
    import requests
    base = hub.base + hub.prefix.rstrip("/")

    def browse():
        # logs in through the hub's login form, as a person would (the test authenticator takes name == password)
        s = requests.Session()
        s.get(base + "/hub/login", timeout=30)
        s.post(base + "/hub/login", data={"username": "iris", "password": "iris", "_xsrf": s.cookies.get("_xsrf")},
               timeout=30)
        return s.get(base + "/hub/spawn", timeout=60)
    r = await asyncio.to_thread(browse)
    assert r.status_code == 200, r.text
    html = r.text
    assert "Remaining in the project:" in html
    small = next(line for line in html.splitlines() if 'value="m1.small"' in line)
    large = next(line for line in html.splitlines() if 'value="m1.large"' in line)
    assert "disabled" in small and "too small for this image" in small
    assert "disabled" not in large and "selected" in large


def _browse_spawn_page(hub, name):
    """The spawn page as a person logged in through the hub's login form sees it (the test authenticator
    takes name == password)."""
    import requests
    base = hub.base + hub.prefix.rstrip("/")
    s = requests.Session()
    s.get(base + "/hub/login", timeout=30)
    s.post(base + "/hub/login", data={"username": name, "password": name, "_xsrf": s.cookies.get("_xsrf")},
           timeout=30)
    return s.get(base + "/hub/spawn", timeout=60)


async def test_flavors_over_the_remaining_quota_are_disabled_and_refused(os_hub, make_cloud):
    from .conftest import failed_spawn
    # 2 vCPUs and 6 GiB RAM left in the project
    cloud = make_cloud({"boot_delay": 0.2, "quotas": {"cores": 2, "ram": 6144}})
    app, hub = await os_hub(cloud=cloud, flavor_choices=["m1.small", "m1.medium", "m1.large"])
    r = await asyncio.to_thread(_browse_spawn_page, hub, "quinn")
    assert r.status_code == 200, r.text
    html = r.text
    assert "Remaining in the project: 10 servers, 2 vCPUs, 6144 MiB RAM, 1000 GB of volumes." in html
    option = {f: next(line for line in html.splitlines() if f'value="{f}"' in line)
              for f in ("m1.small", "m1.medium", "m1.large")}
    assert "disabled" not in option["m1.small"] and "selected" in option["m1.small"]
    assert "disabled" not in option["m1.medium"]
    assert "disabled" in option["m1.large"]
    assert "over the remaining quota: needs 4 vCPUs, 2 left; needs 8192 MiB RAM, 6144 MiB left" in option["m1.large"]

    # the server refuses it too (a form can be bypassed), with the numbers and what fits
    message = await failed_spawn(hub, "quinn", options={"flavor": "m1.large"})
    assert message == ("The flavor m1.large does not fit the project's remaining quota: needs 4 vCPUs, 2 left; "
                       "needs 8192 MiB RAM, 6144 MiB left. Choose a smaller flavor (m1.small, m1.medium fit) or "
                       "stop one of your other servers."), message
    spawner = app.users["quinn"].spawner
    from jhub_broker.spawner.options import OptionsForm
    flavor, _ = await OptionsForm(spawner).validate({"flavor": "m1.small"})
    assert flavor["name"] == "m1.small"

    # no room for the user's new data volume (1 GB): nothing fits, whatever the flavor
    await asyncio.to_thread(cloud.admin, "PUT", "/_emulator/boot", {"quotas": {"gigabytes": 0}})
    html = (await asyncio.to_thread(_browse_spawn_page, hub, "quinn")).text
    small = next(line for line in html.splitlines() if 'value="m1.small"' in line)
    assert "disabled" in small and "a new 1 GB data volume needs 1 GB, 0 GB left" in small
    message = await failed_spawn(hub, "quinn", options={"flavor": "m1.small"})
    assert "a new 1 GB data volume needs 1 GB, 0 GB left" in message and "No offered flavor fits" in message
