"""Operator profiles offered by JupyterHub groups and Check-in entitlements: what the form shows, what a start
through the REST API may use, and a configuration mistake named precisely."""
import asyncio
import os

import pytest
from traitlets import TraitError
from traitlets.config import Config

from jhub_broker.emulators.mockhub import IMAGE
from jhub_broker.spawner.openstack import OpenStackSpawner
from jhub_broker.spawner.profiles import allowed_profiles, chosen_profile

from .conftest import footprint, tagged
from .test_poll_and_form import _browse_spawn_page

PROFILES = [
    {"slug": "small-vm", "display_name": "Small VM", "placement": "dedicated", "image": IMAGE,
     "flavor": "m1.small", "credits_per_day": 20},
    {"slug": "shared-small", "display_name": "Small, shared host", "placement": "shared", "pool": "default",
     "image": "jupyter/datascience-notebook", "cpu_limit": 1, "mem_limit": "2G", "credits_per_day": 5},
    {"slug": "vliz-medium", "display_name": "VLIZ medium VM", "placement": "dedicated", "image": IMAGE,
     "flavor": "m1.medium", "credits_per_day": 40, "groups": ["vliz"],
     "description": "For the VLIZ analysis group"},
]


def _spawn_with_form(hub, name, profile):
    """Logs in through the hub's login form and submits the spawn form with ``profile`` chosen, as a person
    would (the test authenticator takes name == password); the answer, not followed."""
    import requests
    base = hub.base + hub.prefix.rstrip("/")
    s = requests.Session()
    s.get(base + "/hub/login", timeout=30)
    s.post(base + "/hub/login", data={"username": name, "password": name, "_xsrf": s.cookies.get("_xsrf")},
           timeout=30)
    return s.post(base + "/hub/spawn", data={"profile": profile, "_xsrf": s.cookies.get("_xsrf")}, timeout=60,
                  allow_redirects=False)


def _card(html, slug):
    """The lines of the form about one profile (empty when the form does not offer it)."""
    start = html.find(f'id="profile-{slug}"')
    return "" if start < 0 else html[start:html.find("</div>\n  </div>", start)]


def _server_flavors(cloud):
    servers, _, _ = tagged(cloud)
    return {s.metadata["jhub_broker_user"]: s.flavor.original_name for s in servers}


async def test_profiles_by_group_form_and_rest_api(os_hub, local_cloud):
    app, hub = await os_hub(profiles=PROFILES)
    hub.token("victor")
    r = await hub.api("POST", "groups/vliz", json={"users": ["victor"]})
    assert r.status_code == 201, r.text

    # olga, in no group, sees the open profiles with what they give and cost, not the group's
    html = (await asyncio.to_thread(_browse_spawn_page, hub, "olga")).text
    small, shared = _card(html, "small-vm"), _card(html, "shared-small")
    assert "1 vCPU, 2 GiB RAM, 20 GB disk (flavor m1.small), image ubuntu-24.04-jupyter" in small
    assert "own VM" in small and "20 credits per day" in small and "checked" in small
    assert "1 vCPU, 2 GiB RAM (limits), container image jupyter/datascience-notebook" in shared
    assert "shared host" in shared and "5 credits per day" in shared
    assert 'aria-describedby="profile-shared-small-details"' in shared and "<legend>Choose a profile</legend>" in html
    assert "vliz-medium" not in html and "VLIZ" not in html

    # ... nor can she start it through the REST API: refused, naming the profile, nothing made in the cloud
    before = await asyncio.to_thread(footprint, local_cloud)
    r = await hub.api("POST", "users/olga/server", json={"profile": "vliz-medium"})
    assert r.status_code == 403, r.text
    assert r.json()["message"] == ("You may not use the profile 'vliz-medium' (VLIZ medium VM): it is offered to "
                                   "other groups. Choose one of: small-vm, shared-small.")
    # an unknown slug: 400, the input clipped, not echoed whole
    r = await hub.api("POST", "users/olga/server", json={"profile": "x" * 5000})
    assert r.status_code == 400 and len(r.text) < 500 and "There is no profile 'xxx" in r.text, r.text
    assert await asyncio.to_thread(footprint, local_cloud) == before
    assert (await hub.api("GET", "users/olga")).json()["servers"] == {}
    # nor through the spawn form, edited by hand: the page says why
    r = await asyncio.to_thread(_spawn_with_form, hub, "olga", "vliz-medium")
    assert r.status_code == 403 and "You may not use the profile &#39;vliz-medium&#39;" in r.text, r.text[-2000:]
    # sending no profile means the first she may use
    spawner = app.users["olga"].spawner
    spawner.user_options = {}
    assert (await chosen_profile(spawner)).slug == "small-vm"
    assert await asyncio.to_thread(footprint, local_cloud) == before

    # victor, in the group, sees it and starts it: his VM has the profile's flavor
    html = (await asyncio.to_thread(_browse_spawn_page, hub, "victor")).text
    medium = _card(html, "vliz-medium")
    assert "2 vCPU, 4 GiB RAM, 40 GB disk (flavor m1.medium)" in medium and "40 credits per day" in medium
    assert "For the VLIZ analysis group" in medium
    r = await asyncio.to_thread(_spawn_with_form, hub, "victor", "vliz-medium")
    assert r.status_code == 302, r.text
    model = await hub.wait_ready("victor")
    assert model and model["ready"], model
    assert await asyncio.to_thread(_server_flavors, local_cloud) == {"victor": "m1.medium"}
    r = await hub.request("GET", "user/victor/api/status", user="victor")
    assert r.status_code == 200, r.text
    await hub.stop_and_wait("victor")


ENT_PROFILES = [
    {"slug": "small-vm", "placement": "dedicated", "image": IMAGE, "flavor": "m1.small"},
    {"slug": "analysis-vm", "display_name": "Analysis VM", "placement": "dedicated", "image": IMAGE,
     "flavor": "m1.medium", "entitlements": ["vo.example.eu:analysis"]},
]
def _keep_auth_state(authenticator, user, auth_state):
    return True


ANALYSIS = "urn:mace:egi.eu:group:vo.example.eu:analysis:role=member#aai.egi.eu"


async def test_profile_by_checkin_entitlement_from_auth_state(os_hub, local_cloud, monkeypatch):
    from jupyterhub.crypto import CryptKeeper

    from jhub_broker.authenticator import CheckinAuthenticator
    # auth_state is stored encrypted: the hub needs a key
    monkeypatch.setattr(CryptKeeper.instance(), "keys", [os.urandom(32)])
    app, hub = await os_hub(profiles=ENT_PROFILES, hub_config={
        "JupyterHub": {"authenticator_class": CheckinAuthenticator},
        "CheckinAuthenticator": {"client_id": "test-hub", "client_secret": "not-a-secret",
                                 "allowed_entitlements": ["vo.example.eu"],
                                 # no Check-in to refresh tokens at here: the stored auth_state stands
                                 "refresh_user_hook": _keep_auth_state}})
    auth = app.authenticator
    # auth_state as CheckinAuthenticator keeps it after a login (the userinfo claims under user_auth_state_key)
    states = {
        "erin": [ANALYSIS],
        # in the VO but not its analysis sub-group
        "fred": ["urn:mace:egi.eu:group:vo.example.eu:role=member#aai.egi.eu"],
        # the right group, asserted by an authority this hub does not trust
        "mallory": [ANALYSIS.replace("#aai.egi.eu", "#aai.example.org")],
    }
    for name, entitlements in states.items():
        hub.token(name)
        await app.users[name].save_auth_state(
            {auth.user_auth_state_key: {auth.entitlement_claim: entitlements, "sub": f"{name}@egi.eu"}})

    for name in ("fred", "mallory"):
        assert [p.slug for p in await allowed_profiles(app.users[name].spawner)] == ["small-vm"], name
        r = await hub.api("POST", f"users/{name}/server", json={"profile": "analysis-vm"})
        assert r.status_code == 403 and "'analysis-vm'" in r.json()["message"], r.text
    assert await asyncio.to_thread(_server_flavors, local_cloud) == {}

    spawner = app.users["erin"].spawner
    assert [p.slug for p in await allowed_profiles(spawner)] == ["small-vm", "analysis-vm"]
    form = await spawner.options_form(spawner)
    assert 'id="profile-analysis-vm"' in form and "Analysis VM" in form
    model = await hub.start_and_wait("erin", options={"profile": "analysis-vm"})
    assert model and model["ready"], model
    assert await asyncio.to_thread(_server_flavors, local_cloud) == {"erin": "m1.medium"}
    await hub.stop_and_wait("erin")


@pytest.mark.parametrize("profile, message", [
    ({"slug": "a", "placement": "dedicated", "image": IMAGE, "flavor": "m1.small", "cpu": 2},
     "profiles[1] ('a'): key 'cpu' is not known for a dedicated profile"),
    ({"slug": "a", "placement": "dedicated", "flavor": "m1.small"},
     "profiles[1] ('a'): key 'image' is missing"),
    ({"slug": "a", "placement": "dedicated", "image": IMAGE},
     "profiles[1] ('a'): key 'flavor' is missing"),
    ({"slug": "a", "placement": "shared", "image": "x", "cpu_limit": 1, "mem_limit": "1G"},
     "profiles[1] ('a'): key 'pool' is missing"),
    ({"slug": "a", "placement": "shared", "image": "x", "pool": "p", "mem_limit": "1G"},
     "profiles[1] ('a'): key 'cpu_limit' is missing"),
    ({"slug": "a", "placement": "shared", "image": "x", "pool": "p", "cpu_limit": 1, "mem_limit": "lots"},
     "profiles[1] ('a'): key 'mem_limit' is missing"),
    ({"slug": "small-vm", "placement": "dedicated", "image": IMAGE, "flavor": "m1.small"},
     "profiles[1] ('small-vm'): key 'slug': 'small-vm' is already used"),
    ({"slug": "a", "placement": "vm", "image": IMAGE},
     "profiles[1] ('a'): key 'placement' must be 'dedicated'"),
])
def test_bad_profile_config_names_profile_and_key(profile, message):
    c = Config()
    c.OpenStackSpawner.profiles = [PROFILES[0], profile]
    with pytest.raises(TraitError) as e:
        OpenStackSpawner(config=c)
    assert str(e.value).startswith("OpenStackSpawner." + message), str(e.value)


async def test_dedicated_profile_over_the_remaining_quota_is_disabled_and_refused(os_hub, make_cloud):
    from .conftest import failed_spawn
    cloud = make_cloud({"boot_delay": 0.2, "quotas": {"cores": 1}})  # 1 vCPU left in the project
    app, hub = await os_hub(cloud=cloud, profiles=PROFILES[:2] + [dict(PROFILES[2], groups=[])])
    html = (await asyncio.to_thread(_browse_spawn_page, hub, "quinn")).text
    assert "Remaining in the project: 10 servers, 1 vCPUs, 51200 MiB RAM, 1000 GB of volumes." in html
    medium = _card(html, "vliz-medium")
    assert "disabled" in medium and "Over the remaining quota: needs 2 vCPUs, 1 left." in medium
    assert "disabled" not in _card(html, "small-vm") and "checked" in _card(html, "small-vm")
    # the server refuses it too, saying what to do
    message = await failed_spawn(hub, "quinn", options={"profile": "vliz-medium"})
    assert message == ("The flavor m1.medium does not fit the project's remaining quota: needs 2 vCPUs, 1 left. "
                       "Choose another profile or stop one of your other servers."), message


def test_configure_refuses_bad_profiles_when_the_hub_loads_its_config():
    """A mistake stops the hub at start-up (configure() runs while it loads jupyterhub_config.py), not at the
    first spawn page."""
    import jhub_broker
    from jhub_broker.spawner.profiles import ProfileConfigError
    bad = [{"slug": "vm", "placement": "dedicated", "image": IMAGE, "flavor": "m1.small", "pool": "default"}]
    with pytest.raises(ProfileConfigError, match=r"profiles\[0\] \('vm'\): key 'pool'"):
        jhub_broker.configure(Config(), spawner_options={"profiles": bad}, broker=False)
    good = [dict(bad[0])]
    del good[0]["pool"]
    c = jhub_broker.configure(Config(), spawner_options={"profiles": good}, broker=False)
    assert c.OpenStackSpawner.profiles == good
