"""``static``: access keys per group from the operator's secrets file (YAML).

File shape::

    keys:
      vo.example.eu: {access_key_id: ..., secret_access_key: ...}
      vo.example.eu:analysis: {access_key_id: ..., secret_access_key: ...}
"""
import yaml

from .credentials import Credentials


class StaticBackend:
    def __init__(self, endpoint, log):
        self.path = endpoint["secrets_file"]
        self.log = log

    def _keys(self):
        with open(self.path) as f:
            return (yaml.safe_load(f) or {}).get("keys") or {}

    async def credentials(self, user, auth_state, grants):
        """Credentials for the grants, which must all share one key."""
        keys = self._keys()
        names = {g.key for g in grants}
        if len(names) != 1:
            raise KeyError("static backend: grants in one profile need one key")
        entry = keys.get(names.pop())
        if not entry:
            raise KeyError("static backend: no key for this group in the secrets file")
        return Credentials(entry["access_key_id"], entry["secret_access_key"])

    def profiles_share_credentials(self):
        return False
