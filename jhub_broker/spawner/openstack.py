"""OpenStackSpawner: one VM per user on an OpenStack cloud, booted with cloud-init."""
import asyncio
import hashlib
import inspect
import os
import re
import socket
import ssl
import time
from urllib.parse import urlparse, urlunparse

from jupyterhub.spawner import Spawner, SpawnException
from jupyterhub.utils import exponential_backoff, make_ssl_context
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as os_exc
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import default

from . import bootstrap, profiles, tls
from .cloud import CloudAdapter, CloudError
from .lifecycle import VMLifecycle
from .messages import explain
from .options import OptionsForm
from .reaper import Reaper
from .servercache import ServerCache
from .traits import OpenStackTraits
from .userdata import build_context, render_user_data

_NAME_SAFE = re.compile(r"[^a-zA-Z0-9-]+")
# server statuses in which a VM is still (or again) running the notebook
_ALIVE = {"ACTIVE", "BUILD", "REBOOT", "HARD_REBOOT", "MIGRATING", "RESIZE", "VERIFY_RESIZE", "PASSWORD"}


def _safe(text, limit=40):
    return _NAME_SAFE.sub("-", text).strip("-")[:limit] or "x"


class OpenStackSpawner(OpenStackTraits, Spawner):
    """Starts each user's notebook server on a VM of its own in an OpenStack cloud.

    The user's files live on a Cinder volume that outlives the VM.  Cloud calls
    run off the event loop through one shared, bounded connection per cloud;
    poll() reads a hub-wide server list refreshed once per interval.
    """

    server_id = None
    volume_id = None
    floating_ip_id = None
    address = None
    # shared placement (pool/): the notebook is a container on a pool host
    pool = None
    host_id = None
    host_address = None
    port_on_host = None
    container = None
    _warned_plain_bootstrap = False
    _STATE_KEYS = ("server_id", "volume_id", "floating_ip_id", "address",
                   "pool", "host_id", "host_address", "port_on_host", "container")

    @default("start_timeout")
    def _start_timeout_default(self):
        # booting a VM takes longer than starting a process; start() enforces
        # its own finer timeouts (boot_timeout, notebook_timeout)
        return 1800

    @default("http_timeout")
    def _http_timeout_default(self):
        return 120

    @default("hub_id")
    def _hub_id_default(self):
        url = str(self.db.bind.url) if self.db is not None else "jupyterhub"
        return hashlib.sha256(url.encode()).hexdigest()[:8]

    @default("server_token_scopes")
    def _server_token_scopes_default(self):
        from ..authenticator.s3.scope import OWN_S3_SCOPE, SERVER_ROLE_SCOPES, scope_defined
        scopes = []  # empty: the hub's default, the `server` role's scopes
        if self.environments_service_url:
            # the VM reads the broker service with the notebook's token (see environments_service_url)
            from ..services.scopes import VIEW
            scopes = SERVER_ROLE_SCOPES + [VIEW, f"access:services!service={self.environments_service_name}"]
        if scope_defined():
            # the VM fetches its user's S3 credentials from the hub with this token; asking for a scope the
            # hub does not declare would fail every spawn, hence only when declared
            scopes = (scopes or SERVER_ROLE_SCOPES) + [OWN_S3_SCOPE]
        return scopes

    @default("options_form")
    def _options_form_default(self):
        return self._render_options_form

    @default("ssl_alt_names_include_local")
    def _ssl_alt_names_include_local_default(self):
        # the notebook runs on a VM of its own: localhost/127.0.0.1 are not its names
        return False

    @default("ssl_alt_names")
    def _ssl_alt_names_default(self):
        # not the hub's trusted_alt_names (JupyterHub's default): those name the hub, not a VM
        return []

    # -- shared machinery ------------------------------------------------------------------
    def _connect_kwargs(self):
        kwargs = {"load_yaml_config": False, "load_envvars": False}
        if self.cloud:
            import openstack.config
            files = [self.clouds_yaml] if self.clouds_yaml else None
            if not files and os.environ.get("OS_CLIENT_CONFIG_FILE"):
                files = [os.environ["OS_CLIENT_CONFIG_FILE"]]
            loader = openstack.config.OpenStackConfig(config_files=files, load_envvars=False) if files \
                else openstack.config.OpenStackConfig(load_envvars=False)
            region = self.region_name or None
            return {"config": loader.get_one(cloud=self.cloud, region_name=region, **self._timeout_kwargs())}
        if not self.auth:
            raise SpawnException("OpenStackSpawner is not configured: set c.OpenStackSpawner.cloud "
                                 "(a clouds.yaml entry) or c.OpenStackSpawner.auth.", reason="config")
        auth_type = self.auth_type or ("v3applicationcredential" if "application_credential_id" in self.auth
                                       or "application_credential_secret" in self.auth else "password")
        kwargs.update(auth_type=auth_type, auth=dict(self.auth), **self._timeout_kwargs())
        if self.region_name:
            kwargs["region_name"] = self.region_name
        return kwargs

    def _timeout_kwargs(self):
        # a hung answer becomes a timeout, which the adapter treats like a lost answer
        return {"api_timeout": self.api_timeout} if self.api_timeout > 0 else {}

    def _cloud_key(self):
        return (self.cloud, self.clouds_yaml or os.environ.get("OS_CLIENT_CONFIG_FILE", ""),
                tuple(sorted((k, str(v)) for k, v in self.auth.items())), self.region_name, self.api_timeout)

    @property
    def adapter(self):
        kwargs = None if CloudAdapter._instances.get(self._cloud_key()) else self._connect_kwargs()
        adapter = CloudAdapter.shared(self._cloud_key(), kwargs, max_workers=self.api_concurrency)
        adapter.retries = self.api_retries
        return adapter

    @property
    def lifecycle(self):
        adapter = self.adapter
        lc = getattr(adapter, "_lifecycles", {}).get(self.hub_id)
        if lc is None:
            adapter._lifecycles = getattr(adapter, "_lifecycles", {})
            lc = adapter._lifecycles[self.hub_id] = VMLifecycle(adapter, self.hub_id)
        return lc

    def _cache(self):
        return ServerCache.shared(self.adapter, self.lifecycle.tag, interval=self.cache_interval)

    def _ensure_reaper(self):
        if self.reaper_interval > 0:
            Reaper.ensure(self)

    # -- names and tags ------------------------------------------------------------------------
    @property
    def _servername_suffix(self):
        return f"-{_safe(self.name, 20)}" if self.name else ""

    def _server_name(self):
        return self.server_name_template.format(hub_id=self.hub_id, username=_safe(self.user.name),
                                                servername=self.name or "",
                                                servername_suffix=self._servername_suffix)

    def _volume_name(self):
        suffix = self._servername_suffix if self.volume_scope == "server" else ""
        return f"jupyter-data-{self.hub_id}-{_safe(self.user.name)}{suffix}"

    def _resource_metadata(self):
        return {"jhub_broker_hub": self.hub_id, "jhub_broker_user": self.user.name[:255],
                "jhub_broker_server": (self.name or "")[:255]}

    # -- state ---------------------------------------------------------------------------------
    def get_state(self):
        state = super().get_state()
        for key in self._STATE_KEYS:
            if getattr(self, key):
                state[key] = getattr(self, key)
        return state

    def load_state(self, state):
        super().load_state(state)
        for key in self._STATE_KEYS:
            setattr(self, key, state.get(key))
        self._known_since = time.monotonic()

    def clear_state(self):
        # the volume id stays: the data volume outlives every server
        super().clear_state()
        self.server_id = None
        self.floating_ip_id = None
        self.address = None
        self.pool = self.host_id = self.host_address = self.port_on_host = self.container = None

    def _shared(self, profile=None):
        from .pool.placement import SharedPlacement
        return SharedPlacement(self, profile=profile, pool=None if profile else self.pool)

    # -- progress ------------------------------------------------------------------------------
    def _progress(self, percent, message):
        events = self.__dict__.setdefault("_events", [])
        events.append({"progress": percent, "message": message})
        self.log.info("%s: %s", self._log_name, message)
        self.__dict__.setdefault("_events_changed", asyncio.Event()).set()

    async def progress(self):
        events = self.__dict__.setdefault("_events", [])
        changed = self.__dict__.setdefault("_events_changed", asyncio.Event())
        sent = 0
        while True:
            while sent < len(events):
                yield events[sent]
                sent += 1
            if self.__dict__.get("_spawn_done"):
                return
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), 1)
            except asyncio.TimeoutError:
                pass

    # -- options form ------------------------------------------------------------------------
    async def _render_options_form(self, spawner):
        return await OptionsForm(self).render()

    def options_from_form(self, formdata):
        return OptionsForm.parse(formdata)

    async def _chosen(self):
        """Flavor and image for this spawn, validated server-side against the choices (with profiles: the
        chosen dedicated profile's, after checking the user may use it)."""
        profile = await profiles.chosen_profile(self)
        return await OptionsForm(self).validate(self.user_options or {}, profile)

    # -- internal_ssl ---------------------------------------------------------------------------
    async def create_certs(self):
        """Called by the hub before start() when ``c.JupyterHub.internal_ssl`` is on.

        Nothing is created here: the VM's addresses are not known yet. start() signs the
        notebook's certificate (``notebooks-ca``, the VM's fixed and floating IP as SANs plus
        ``ssl_alt_names``) once they are, in memory, and sends key, certificate and trust bundle
        to the VM in the one-time bootstrap payload; no key is written on the hub.
        """
        return {"deferred": True}

    async def move_certs(self, paths):
        """Where the VM's agent writes the files: what JUPYTERHUB_SSL_* point the notebook at."""
        return dict(tls.VM_CERT_PATHS)

    async def _sign_certificate(self, addresses):
        ssl_alt_names = self.ssl_alt_names
        if callable(ssl_alt_names):
            ssl_alt_names = ssl_alt_names(self)
            if inspect.isawaitable(ssl_alt_names):
                ssl_alt_names = await ssl_alt_names
        extra = list(ssl_alt_names or [])
        if self.ssl_alt_names_include_local:
            extra = ["DNS:localhost", "IP:127.0.0.1"] + extra
        names = tls.alt_names_for(addresses, extra)
        common_name = "user-" + self.user.name + (f"-{self.name}" if self.name else "")
        pair = await asyncio.to_thread(tls.sign_notebook_pair, self.internal_certs_location, common_name, names,
                                       self.internal_trust_bundles[tls.NOTEBOOK_CA])
        self.log.info("Signed the notebook certificate of %s for %s", self._log_name, ", ".join(names))
        return pair

    def _hub_ssl_context(self):
        """The hub's client context for talking to notebooks (as JupyterHub's own wait_up uses)."""
        settings = getattr(self.user, "settings", None) or {}
        return make_ssl_context(settings.get("internal_ssl_key"), settings.get("internal_ssl_cert"),
                                cafile=settings.get("internal_ssl_ca"))

    # -- start --------------------------------------------------------------------------------
    async def start(self):
        self.__dict__["_events"] = []
        self.__dict__["_spawn_done"] = False
        created = {}
        try:
            profile = await profiles.chosen_profile(self)
            if profile is not None and profile.placement == "shared":
                created["step"] = "container"
                bootstrap.ensure_registered(self.log)  # pool hosts redeem their secrets there too
                self._ensure_reaper()
                return await self._shared(profile).start()
            return await self._start(created)
        except SpawnException:
            await self._cleanup_failed(created)
            raise
        except (CloudError, os_exc.SDKException, ksa_exc.ClientException) as e:
            await self._cleanup_failed(created)
            message = explain(created.get("step"), e)
            self.log.warning("spawn of %s failed at step %s: %r", self._log_name, created.get("step"), e)
            self._progress(100, message)
            raise SpawnException(message, reason="cloud") from None
        except asyncio.CancelledError:
            await asyncio.shield(self._cleanup_failed(created))
            raise
        except Exception:
            await self._cleanup_failed(created)
            raise
        finally:
            self.__dict__["_spawn_done"] = True
            self.__dict__.setdefault("_events_changed", asyncio.Event()).set()

    async def _start(self, created):
        bootstrap.ensure_registered(self.log)
        lc = self.lifecycle
        self._ensure_reaper()
        created["step"] = "prepare"
        flavor, image = await self._chosen()
        self._progress(5, f"Preparing a {flavor['name']} server with {image['name']}")
        network_ids = await lc.network_ids(self.networks)
        groups = list(self.security_groups)
        if self.manage_security_group:
            groups.append(await lc.ensure_security_group(self.notebook_port, self._allowed_cidrs()))

        if self.volume_size > 0:
            created["step"] = "volume"
            self._progress(10, "Preparing your data volume")
            self.volume_id, fresh = await lc.ensure_volume(
                self.volume_id, self._volume_name(), self.volume_size, self._resource_metadata(),
                self.volume_type or None, self.availability_zone or None, timeout=self.volume_timeout)
            self._progress(20, "Data volume ready" + (" (new)" if fresh else ""))

        env = self.get_env()
        owner = f"{self.user.name}/{self.name}"
        payload = {"env": env, "port": self.notebook_port, "args": list(self.args)}
        # with internal_ssl the payload is held until the notebook's certificate is signed (below)
        secret = bootstrap.registry.issue(owner, payload, ttl=self.boot_timeout + self.notebook_timeout,
                                          held=bool(self.internal_ssl))
        created["bootstrap"] = owner
        # the S3 credential helper goes to the VM when the authenticator gave the server AWS profiles
        user_data = self._render_user_data(secret, s3_helper="JHUB_BROKER_AWS_CONFIG" in env)

        name = self._server_name()
        created["step"] = "server"
        self._progress(25, f"Requesting server {name}")
        self.server_id = await lc.create_server(
            name=name, image_id=image["id"], flavor_id=flavor["id"], network_ids=network_ids,
            security_groups=groups, user_data=user_data, metadata=dict(self.server_metadata, **self._resource_metadata()),
            tags=[lc.tag, *self.server_tags], key_name=self.key_name or None,
            availability_zone=self.availability_zone or None, volume_id=self.volume_id)
        created["server"] = self.server_id
        Reaper.in_flight.add(self.server_id)
        self._progress(30, "Server is building")

        cache = self._cache()
        try:
            entry = await cache.wait_for(self.server_id, lambda e: e is not None and e["status"] in ("ACTIVE", "ERROR"),
                                         timeout=self.boot_timeout)
        except asyncio.TimeoutError:
            raise CloudError(f"The server did not become active within {self.boot_timeout:.0f} s." +
                             await self._console_hint()) from None
        if entry["status"] == "ERROR":
            fault = entry.get("fault") or await lc.server_fault(self.server_id) or "no reason given"
            raise CloudError(f"The cloud could not boot the server: {fault}")
        self._progress(50, "Server is active, booting")

        fixed = lc.fixed_ip(entry)
        created["step"] = "address"
        if self.floating_ip_pool:
            self.floating_ip_id, self.address = await lc.attach_floating_ip(
                self.server_id, self.floating_ip_pool, lc.fip_description(self.user.name, self.name or ""))
            created["floating_ip"] = self.floating_ip_id
        else:
            self.address = fixed
        if not self.address:
            raise CloudError("The server has no IPv4 address on its network.")
        if self.internal_ssl:
            # the key exists only in this payload (memory) until the VM redeems it; revoked on failure/stop
            bootstrap.registry.release(owner, ssl=await self._sign_certificate([fixed, self.address]))
        self._progress(60, f"Address {self.address} assigned; waiting for the notebook server")
        created["step"] = "notebook"

        await self._wait_for_notebook(owner)
        Reaper.in_flight.discard(self.server_id)
        self._known_since = time.monotonic()
        self._progress(100, "Notebook server is answering")
        # the hub makes this https:// when internal_ssl is on
        return (self.address, self.notebook_port)

    def _allowed_cidrs(self):
        if self.notebook_allowed_cidrs:
            return list(self.notebook_allowed_cidrs)
        ips = {self.hub.connect_ip or self.hub.ip or "127.0.0.1"}
        out = []
        for ip in ips:
            if ip in ("", "0.0.0.0"):
                continue
            out.append(f"{ip}/128" if ":" in ip else f"{ip}/32")
        return out or ["127.0.0.1/32"]

    def _bootstrap_url(self):
        """Where the VM redeems its secret."""
        if self.bootstrap_url:
            return self.bootstrap_url
        if not self.internal_ssl:
            return self.hub.api_url.rstrip("/") + "/jhub-broker/bootstrap"
        # internal_ssl: the hub's own port demands a client certificate, which the VM gets only by
        # redeeming its secret; so it goes through the proxy's public side (which has one)
        if self.public_hub_url:
            url = self.public_hub_url.rstrip("/") + "/api/jhub-broker/bootstrap"
        else:
            from jupyterhub.app import JupyterHub
            public = urlparse(JupyterHub.instance().proxy.public_url)
            host = public.hostname
            if host in (None, "", "0.0.0.0", "::"):
                host = self.hub.connect_ip or socket.gethostname()
            netloc = (f"[{host}]" if ":" in host else host) + (f":{public.port}" if public.port else "")
            url = urlunparse((public.scheme or "http", netloc,
                              self.hub.base_url.rstrip("/") + "/api/jhub-broker/bootstrap", "", "", ""))
        host = urlparse(url).hostname or ""
        if url.startswith("http://") and not host.startswith("127.") and host not in ("localhost", "::1") \
                and not OpenStackSpawner._warned_plain_bootstrap:
            OpenStackSpawner._warned_plain_bootstrap = True
            self.log.warning("internal_ssl is on, but VMs fetch their settings (API token, TLS key) over plain HTTP "
                             "at %s: serve the hub's public URL over https or set c.OpenStackSpawner.bootstrap_url",
                             url)
        return url

    def _render_user_data(self, secret, s3_helper=False):
        bootstrap_url = self._bootstrap_url()
        context = build_context(
            hub_user=self.user.name, server_name=self.name or "", vm_user=self.vm_user,
            bootstrap={"url": bootstrap_url, "secret": secret, "user": self.vm_user, "port": self.notebook_port,
                       "notebook_dir": self.volume_mount_point,
                       "singleuser": [os.path.join(self.singleuser_venv, "bin", "jupyterhub-singleuser"),
                                      "/usr/local/bin/jupyterhub-singleuser", "/usr/bin/jupyterhub-singleuser"],
                       "environments": self._environments_config()},
            volume_id=self.volume_id, mount_point=self.volume_mount_point,
            singleuser_venv=self.singleuser_venv, install_packages=self.install_packages,
            sync_code=bool(self.environments_service_url), s3_helper=s3_helper)
        return render_user_data(template_path=self.user_data_template or None,
                                template_string=self.user_data_template_string or None, context=context)

    def _environments_config(self):
        """What the VM agent needs to build the broker's environments (None: off)."""
        if not self.environments_service_url:
            return None
        from .userdata import VM_PKG_DIR
        return {"service_url": self.environments_service_url, "root": self.environments_root,
                "data_dir": self.environments_data_dir, "pkg_dir": VM_PKG_DIR,
                "installer": self.environments_installer, "timeout": self.environments_timeout,
                "interval": self.environments_sync_interval, "env": dict(self.environments_sync_env),
                "tool_packages": self.environments_tool_packages}

    async def _wait_for_notebook(self, owner):
        proto = "https" if self.internal_ssl else "http"
        url = f"{proto}://{self.address}:{self.notebook_port}{self.user.url if not self.name else self.server.base_url}api"
        ssl_context = self._hub_ssl_context() if self.internal_ssl else None
        client = AsyncHTTPClient()
        redeemed = False
        refused_cert = None

        async def answering():
            nonlocal redeemed, refused_cert
            if not redeemed and not bootstrap.registry.pending(owner):
                redeemed = True
                self._progress(70, "The VM fetched its notebook settings from the hub" +
                               ("; building the shared environments" if self.environments_service_url else ""))
            try:
                await client.fetch(url, request_timeout=5, follow_redirects=False, ssl_options=ssl_context)
                return True
            except HTTPClientError as e:
                return e.code not in (599,)  # any HTTP answer means the server is up
            except ssl.SSLCertVerificationError as e:
                refused_cert = e.verify_message or str(e)
                return True  # answering, with a certificate the hub will not accept: fail now
            except OSError:
                return False
            except Exception:  # noqa: BLE001
                return False

        try:
            await exponential_backoff(answering, "notebook not answering", start_wait=0.05, max_wait=0.25,
                                      timeout=self.notebook_timeout)
        except asyncio.TimeoutError:
            raise CloudError(f"The notebook server on the VM did not answer within {self.notebook_timeout:.0f} s."
                             + await self._console_hint()) from None
        if refused_cert:
            raise CloudError(f"The notebook server on the VM answered with a TLS certificate the hub does not "
                             f"accept ({refused_cert}).")

    async def _console_hint(self):
        if not self.server_id:
            return ""
        tail = await self.lifecycle.console_tail(self.server_id, 15)
        return f" Last lines of the VM's console:\n{tail}" if tail else ""

    async def _cleanup_failed(self, created):
        """Delete what this spawn created; never the user's data volume."""
        lc = self.lifecycle
        if created.get("bootstrap"):
            bootstrap.registry.revoke(created["bootstrap"])
        if created.get("floating_ip"):
            try:
                await lc.release_floating_ip(created["floating_ip"])
            except Exception as e:  # noqa: BLE001
                self.log.error("could not release floating IP %s: %s", created["floating_ip"], e)
        if created.get("server"):
            try:
                await lc.delete_server(created["server"], timeout=self.delete_timeout)
            except Exception as e:  # noqa: BLE001
                self.log.error("could not delete server %s after a failed spawn: %s (the reaper will retry)",
                               created["server"], e)
            Reaper.in_flight.discard(created["server"])
        self.server_id = None
        self.floating_ip_id = None
        self.address = None

    # -- poll / stop -----------------------------------------------------------------------------
    async def poll(self):
        if self.pool:
            return await self._shared().poll()
        if not self.server_id:
            return 0
        self._ensure_reaper()
        cache = self._cache()
        since = self.__dict__.get("_known_since", 0.0)
        entry, certain = cache.lookup(self.server_id, since)
        if not certain:
            try:
                await cache.wait_for(self.server_id, lambda e: True, timeout=10)
            except asyncio.TimeoutError:
                return None  # the cloud is not answering: not evidence the VM is gone
            entry, certain = cache.lookup(self.server_id, since)
        if entry is None:
            return 1 if certain else None
        if entry["status"] in _ALIVE:
            return None
        return 1

    async def stop(self, now=False):
        lc = self.lifecycle
        owner = f"{self.user.name}/{self.name}"
        bootstrap.registry.revoke(owner)
        if self.pool:
            await self._shared().stop()
        if self.floating_ip_id:
            await lc.release_floating_ip(self.floating_ip_id)
            self.floating_ip_id = None
        if self.server_id:
            await lc.delete_server(self.server_id, timeout=self.delete_timeout)
            self.server_id = None
        self.address = None

    async def delete_forever(self):
        """The user (or named server) is deleted: remove the data volume too."""
        if self.volume_scope == "user" and self.name:
            return  # the user's volume belongs to the default server's lifecycle
        if self.volume_id:
            try:
                await self.lifecycle.delete_volume(self.volume_id)
                self.log.info("deleted data volume %s of %s", self.volume_id, self._log_name)
            except Exception as e:  # noqa: BLE001
                self.log.error("could not delete data volume %s: %s (the reaper will retry)", self.volume_id, e)
            self.volume_id = None
