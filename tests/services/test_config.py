"""service_config: what it adds to a hub config."""
import json

from traitlets.config import Config

from jhub_broker.services.app import BrokerService
from jhub_broker.services.config import service_config


def test_service_config_adds_service_scopes_roles_and_kernel_path(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_CRYPT_KEY", raising=False)  # else the key file would go to /srv/envs/.state
    c = Config()
    c.Spawner.environment = {"JUPYTER_PATH": "/srv/other"}
    url = service_config(c, port=18123, environments_root="/srv/envs", managers=["carol"],
                         initial_environments=[{"name": "example", "requirements": ["six"]}])
    assert url == "http://127.0.0.1:18123"
    (svc,) = c.JupyterHub.services
    assert svc["name"] == "broker" and svc["url"] == url and svc["oauth_no_confirm"] is True
    assert svc["command"][1:3] == ["-m", "jhub_broker.services"]
    assert set(c.JupyterHub.custom_scopes) == {"custom:broker-environments:manage",
                                                "custom:broker-environments:view"}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["broker-managers"]["users"] == ["carol"]
    assert "custom:broker-environments:manage" in roles["broker-managers"]["scopes"]
    assert "custom:broker-environments:manage" not in roles["user"]["scopes"]
    assert {"self", "access:services!service=broker", "custom:broker-environments:view"} <= set(
        roles["user"]["scopes"])
    assert c.Spawner.environment["JUPYTER_PATH"] == "/srv/other:/srv/envs/.jupyter"

    # the service parses the command line the hub will give it
    app = BrokerService()
    monkeypatch.setenv("JHUB_BROKER_INITIAL_ENVIRONMENTS", svc["environment"]["JHUB_BROKER_INITIAL_ENVIRONMENTS"])
    app.parse_command_line(svc["command"][3:])
    assert app.environments_root == "/srv/envs"
    assert app.jupyter_data_dir == "/srv/envs/.jupyter"
    assert app.initial_environments == [{"name": "example", "requirements": ["six"]}]


def test_service_config_works_on_plain_dicts(monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_CRYPT_KEY", raising=False)
    c = {}
    service_config(c, port=18124, environments_root="/srv/envs", all_users_view=False)
    assert c["JupyterHub"]["services"][0]["name"] == "broker"
    assert [r["name"] for r in c["JupyterHub"]["load_roles"]] == ["broker-managers"]
    json.dumps(c)  # serializable as a plain config
