"""``/_emulator/*``: the test and demo controls of the cloud, admin only.

Callers present ``X-Emulator-Admin: <admin secret>`` (written to the state
dir, mode 0600) or a Keystone token with the ``admin`` role.
"""
import hmac

from .faults import validate
from .web import APIError, BaseHandler


class AdminHandler(BaseHandler):
    requires_auth = False

    async def prepare(self):
        await super().prepare()
        secret = self.request.headers.get("X-Emulator-Admin", "")
        if secret and hmac.compare_digest(secret, self.cloud.admin_secret):
            return
        info = self.cloud.check_token(self.request.headers.get("X-Auth-Token"))
        if info is None:
            raise APIError(401, "The request you have made requires authentication.", kind="Unauthorized")
        if "admin" not in info["roles"]:
            raise APIError(403, "Emulator controls need the admin role.", kind="Forbidden")


class FaultsHandler(AdminHandler):
    def get(self):
        self.send({"faults": self.cloud.faults.public(), "fired": self.cloud.faults.fired})

    def post(self):
        data = self.body()
        rules = data["faults"] if "faults" in data else [data]
        if not isinstance(rules, list) or not rules:
            raise APIError(400, "Invalid fault rule: 'faults' must be a non-empty list of rules")
        try:
            for r in rules:  # all or none
                validate(r)
        except ValueError as e:
            raise APIError(400, f"Invalid fault rule: {e}")
        added = [self.cloud.faults.add(r) for r in rules]
        self.send({"faults": [{k: v for k, v in r.items() if not k.startswith("_")} for r in added]}, status=201)

    def delete(self):
        self.cloud.faults.clear()
        self.send(None, status=204)


class BootHandler(AdminHandler):
    """Boot behaviour: ``boot_delay`` and ``boot_failures`` (name regex + fault message)."""

    def get(self):
        cfg = self.cloud.config.data
        self.send({"boot_delay": cfg["boot_delay"], "boot_failures": cfg["boot_failures"]})

    def put(self):
        data = self.body()
        cfg = self.cloud.config.data
        if "boot_delay" in data:
            cfg["boot_delay"] = float(data["boot_delay"])
        if "boot_failures" in data:
            cfg["boot_failures"] = list(data["boot_failures"])
        if "quotas" in data:
            cfg["quotas"].update({k: int(v) for k, v in data["quotas"].items()})
        self.send({"boot_delay": cfg["boot_delay"], "boot_failures": cfg["boot_failures"],
                   "quotas": cfg["quotas"]})


class RequestLogHandler(AdminHandler):
    """The API requests the cloud has answered, for benchmarks that count calls."""

    def get(self):
        log = [r for r in self.cloud.request_log if not r[1].startswith("/_emulator")]
        self.send({"requests": [{"method": m, "path": p} for m, p in log]})

    def delete(self):
        self.cloud.request_log.clear()
        self.send(None, status=204)


def routes(cloud):
    a = {"cloud": cloud}
    return [
        (r"/_emulator/faults/?", FaultsHandler, a),
        (r"/_emulator/boot/?", BootHandler, a),
        (r"/_emulator/requests/?", RequestLogHandler, a),
    ]
