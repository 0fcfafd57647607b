"""Hub API: ``GET /hub/api/jhub-broker/s3-credentials/<profile>`` -> the caller's own credentials."""
import json

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import has_scope
from tornado import web

from .scope import S3_SCOPE, scope_defined


class S3CredentialsHandler(APIHandler):
    async def get(self, profile):
        user = self.current_user
        # only a user's own token (e.g. their server's JUPYTERHUB_API_TOKEN), never a service
        if user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "Only a user's own servers may fetch their S3 credentials")
        if not scope_defined():
            raise web.HTTPError(403, f"This hub does not declare the {S3_SCOPE} scope, so no token may fetch S3 "
                                     "credentials: the operator adds it (see docs/authenticator.md)")
        # the token must carry the scope for its own user: a token made with other scopes (or none), a
        # service's OAuth token, or one whose scope names another user, gets nothing
        if not has_scope(f"{S3_SCOPE}!user={user.name}", self.parsed_scopes, db=self.db):
            self.log.info("S3 credentials refused to a token of %s without %s", user.name, S3_SCOPE)
            raise web.HTTPError(403, f"This token lacks the {S3_SCOPE} scope: use your server's "
                                     "JUPYTERHUB_API_TOKEN")
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
