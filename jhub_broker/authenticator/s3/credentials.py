"""The credential value handed to a server (AWS credential_process JSON shape)."""
import time
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str = ""
    expires_at: float = 0.0   # epoch seconds; 0 = does not expire

    def __repr__(self):  # never print secrets
        return f"Credentials(access_key_id={self.access_key_id[:4]}..., expires_at={self.expires_at})"

    __str__ = __repr__

    def process_json(self):
        out = {"Version": 1, "AccessKeyId": self.access_key_id, "SecretAccessKey": self.secret_access_key}
        if self.session_token:
            out["SessionToken"] = self.session_token
        out["Token"] = self.session_token          # container-credentials shape (botocore needs the key)
        # keys that never expire are still re-checked hourly, so a revoked grant stops working
        expires = self.expires_at or (time.time() + 3600)
        out["Expiration"] = datetime.fromtimestamp(expires, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return out
