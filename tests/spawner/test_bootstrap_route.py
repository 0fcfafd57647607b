"""The hub route where VMs redeem their bootstrap secret answers malformed requests with a 400 saying
what to send, never a 500."""
from jhub_broker.spawner import bootstrap

ROUTE = "hub/api/jhub-broker/bootstrap"


async def test_malformed_bootstrap_requests_get_400(os_hub):
    app, hub = await os_hub()
    bootstrap.ensure_registered()  # what the first spawn does
    cases = {
        "deeply nested JSON": "[" * 2000 + "]" * 2000,
        "not an object": '["secret"]',
        "secret is a number": '{"secret": 5}',
        "secret is an object": '{"secret": {"nested": [1, 2]}}',
        "no secret": '{}',
        "not JSON": "secret=abc",
        "oversized body": '{"secret": "' + "a" * 100_000 + '"}',
    }
    for what, body in cases.items():
        r = await hub.request("POST", ROUTE, user=None, data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (what, r.status_code, r.text[:200])
        message = r.json()["message"]
        assert "secret" in message, (what, message)
        assert len(r.text) < 300, what
    # a well-formed request with an unknown secret is still refused as such
    r = await hub.request("POST", ROUTE, user=None, json={"secret": "not-issued"})
    assert r.status_code == 403 and "unknown, spent or expired" in r.json()["message"]
