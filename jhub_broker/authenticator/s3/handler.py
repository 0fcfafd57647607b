"""Hub API: ``GET /hub/api/jhub-broker/s3-credentials/<profile>`` -> the caller's own credentials."""
import json

from jupyterhub.apihandlers.base import APIHandler
from tornado import web


class S3CredentialsHandler(APIHandler):
    async def get(self, profile):
        user = self.current_user
        # only a user's own token (e.g. their server's JUPYTERHUB_API_TOKEN), never a service
        if user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403)
        broker = self.authenticator.s3_broker
        try:
            creds = await broker.credentials(user, profile)
        except KeyError:
            raise web.HTTPError(404, "No S3 grant for this profile") from None
        except PermissionError:
            raise web.HTTPError(403, "Login expired; log in to the hub again") from None
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(creds.process_json()))
