"""The operator-facing configuration of OpenStackSpawner (``c.OpenStackSpawner.*``)."""
import jupyterhub
from traitlets import Bool, Dict, Enum, Float, HasTraits, Integer, List, TraitError, Unicode, default, validate

from .profiles import ProfileConfigError, parse_profiles


class OpenStackTraits(HasTraits):
    # --- the cloud ---------------------------------------------------------------------
    cloud = Unicode("", config=True, help="""Name of the cloud in clouds.yaml to use.

        clouds.yaml is looked up the usual way (OS_CLIENT_CONFIG_FILE, ./clouds.yaml,
        ~/.config/openstack, /etc/openstack) or at `clouds_yaml`. Leave empty to use
        `auth` instead.""")
    clouds_yaml = Unicode("", config=True, help="Explicit path to a clouds.yaml (default: OS_CLIENT_CONFIG_FILE or the standard places).")
    auth = Dict(config=True, help="""Explicit Keystone auth, used when `cloud` is empty.

        Prefer an application credential:
        {"auth_url": "https://keystone.example:5000/v3", "application_credential_id": "...",
         "application_credential_secret": "..."}; username/password/project_name also work.""")
    auth_type = Unicode("", config=True, help="Keystone auth plugin for `auth` (default: v3applicationcredential when an application credential is given, else password).")
    region_name = Unicode("", config=True, help="Region of the cloud (default: the cloud's only/first region).")
    api_concurrency = Integer(8, config=True, help="Most cloud API calls in flight at once for the whole hub (openstacksdk is blocking; calls run in a thread pool of this size).")
    api_retries = Integer(4, config=True, help="""Retries of a cloud call that failed transiently (429 with Retry-After, 5xx,
        a dropped connection, a timeout). Reads and deletes are sent again; a create whose answer was lost
        (500/502/504, timeout, dropped connection) is sent again only after the hub looked for what it may
        have made (by name plus hub tag or metadata) and found nothing.""")
    api_timeout = Float(60, config=True, help="""Seconds to wait for each answer of the cloud's API (0: wait forever).

        A hung answer becomes a timeout, retried like a dropped connection (creates are checked for
        first, see `api_retries`).""")

    # --- the server ------------------------------------------------------------------------
    image = Unicode("", config=True, help="Image name or id to boot (default choice in the options form).")
    flavor = Unicode("", config=True, help="Flavor name or id (default choice in the options form).")
    networks = List(Unicode(), config=True, help="Networks (names or ids) to attach the server to. Default: the project's only non-external network.")
    security_groups = List(Unicode(), config=True, help="Extra security groups for every server (the hub's own group is always added when `manage_security_group`).")
    manage_security_group = Bool(True, config=True, help="Create and use a per-hub security group that lets only the hub/proxy addresses (`notebook_allowed_cidrs`) reach the notebook port.")
    notebook_allowed_cidrs = List(Unicode(), config=True, help="Source CIDRs allowed to reach the notebook port (default: the hub's connect address /32).")
    key_name = Unicode("", config=True, help="Nova key pair to inject (optional; notebooks don't need SSH).")
    availability_zone = Unicode("", config=True, help="Availability zone for servers and volumes (optional).")
    server_name_template = Unicode("jupyter-{hub_id}-{username}{servername_suffix}", config=True, help="Server name; fields: {hub_id}, {username}, {servername}, {servername_suffix} (`-<servername>` for named servers).")
    server_metadata = Dict(config=True, help="Extra Nova metadata on every server (the hub id, user and server name are always added, for accounting tools such as cASO).")
    server_tags = List(Unicode(), config=True, help="Extra tags on every server (the hub tag is always added).")
    hub_id = Unicode("", config=True, help="Identifies this hub's resources in the cloud (tags, metadata, names). Default: derived from the hub's database URL; set it explicitly when several hubs share a project.")

    # --- what runs on the VM ---------------------------------------------------------------------
    user_data_template = Unicode("", config=True, help="Path of a Jinja2 cloud-init template to use instead of the bundled templates/openstack/user_data.yaml.j2.")
    user_data_template_string = Unicode("", config=True, help="The cloud-init template as a string (wins over `user_data_template`).")
    vm_user = Unicode("jovyan", config=True, help="Unprivileged account on the VM that runs the notebook server.")
    notebook_port = Integer(8888, config=True, help="Port of the notebook server on the VM.")
    singleuser_venv = Unicode("/opt/jhub-broker/singleuser", config=True, help="Virtualenv on the VM holding jupyterhub-singleuser; pre-baked images have it, others get it installed at first boot.")
    install_packages = Unicode(f"jupyterhub=={jupyterhub.__version__} jupyterlab", config=True, help="pip requirements installed into `singleuser_venv` when the image lacks it.")
    bootstrap_url = Unicode("", config=True, help="""URL the VM posts its one-time bootstrap secret to, as the VM reaches it
        (the hub's `/hub/api/jhub-broker/bootstrap`). Default: the hub's API URL; with
        `c.JupyterHub.internal_ssl` the hub's public URL (`JupyterHub.public_url`, else the proxy's
        `bind_url`), because the hub's own port then demands a client certificate the VM receives only
        in the bootstrap answer.""")

    # --- shared environments (the broker service's kernels, built on the VM) -------------------
    environments_service_url = Unicode("", config=True, help="""URL of the broker service as the VM reaches it,
        e.g. https://hub.example.org/services/broker/ (empty: off).

        When set, the VM, after fetching its notebook settings and before starting the notebook, runs the
        broker's own sync code (shipped in user_data, jhub_broker need not be installed on the VM): it fetches
        every published environment's lockfile, builds it under `environments_root` with the same builder,
        smoke-tests its kernel and registers the kernelspec in `environments_data_dir`, which is put on the
        notebook's JUPYTER_PATH. The notebook's own API token reads the service: while
        `Spawner.server_token_scopes` is not configured, it gets the `server` role's scopes plus
        `custom:broker-environments:view` and `access:services!service=<environments_service_name>`
        (granted only when the user holds them, as service_config's user role does). If you configure
        `server_token_scopes` yourself, include those two.""")
    environments_service_name = Unicode("broker", config=True, help="Name of the broker service in the hub (for the `access:services` scope of the notebook's token).")
    environments_root = Unicode("/var/lib/jhub-broker/environments", config=True, help="Where the VM builds the shared environments.")
    environments_data_dir = Unicode("/var/lib/jhub-broker/jupyter", config=True, help="Jupyter data dir on the VM for the environments' kernelspecs (added to the notebook's JUPYTER_PATH).")
    environments_installer = Enum(["auto", "uv", "pip"], "auto", config=True, help="Installer the VM builds environments with (auto: uv when the image has it, else pip).")
    environments_timeout = Float(480, config=True, help="Seconds the VM spends at most building environments before it starts the notebook anyway (keep below `notebook_timeout`).")
    environments_sync_interval = Float(600, config=True, help="Seconds between re-syncs on the running VM, so environments changed on the service reach it; 0: sync at boot only.")
    environments_sync_env = Dict(Unicode(), config=True, help="Extra environment for the sync on the VM, e.g. {\"UV_INDEX_URL\": \"https://mirror/simple\", \"PIP_INDEX_URL\": \"...\"}.")
    environments_tool_packages = Unicode("packaging virtualenv uv", config=True, help="pip requirements the VM installs (into /var/lib/jhub-broker/tools) when `singleuser_venv` lacks packaging and virtualenv.")

    # --- the user's data ---------------------------------------------------------------------------
    volume_size = Integer(10, config=True, help="Size (GiB) of the persistent data volume; 0 disables the volume.")
    volume_type = Unicode("", config=True, help="Cinder volume type of the data volume (optional).")
    volume_mount_point = Unicode("/home/jovyan", config=True, help="Where the data volume is mounted on the VM.")
    volume_scope = Enum(["user", "server"], "user", config=True, help="One data volume per user (shared by their named servers, one at a time) or per server.")

    # --- the address -------------------------------------------------------------------------
    floating_ip_pool = Unicode("", config=True, help="External network to allocate a floating IP from; empty means the hub reaches the server on its fixed IP.")

    # --- timing ------------------------------------------------------------------------
    boot_timeout = Float(600, config=True, help="Seconds to wait for the server to become ACTIVE.")
    notebook_timeout = Float(600, config=True, help="Seconds to wait, after ACTIVE, for the notebook server to answer (covers first-boot installs).")
    volume_timeout = Float(180, config=True, help="Seconds to wait for the data volume to become available.")
    delete_timeout = Float(180, config=True, help="Seconds to wait for the server to be gone on stop.")
    cache_interval = Float(10, config=True, help="Seconds between the hub-wide server list calls that serve every poll().")
    reaper_interval = Float(300, config=True, help="Seconds between sweeps for orphaned servers, floating IPs and volumes of this hub; 0 disables the reaper.")
    reaper_grace = Float(config=True, help="""Orphans younger than this (seconds) are left alone, so a spawn in flight is never reaped.

        Default: `boot_timeout` + `notebook_timeout` + 300. A server a hub started before it restarted is
        known to no spawner until its spawn ends, so the grace must outlast the longest spawn: a value
        below `boot_timeout` + `notebook_timeout` is raised to that (with a warning).""")

    # --- options form ----------------------------------------------------------------------
    flavor_choices = List(Unicode(), config=True, help="Flavors offered in the options form (names); empty offers every flavor the cloud lists.")
    image_choices = List(Unicode(), config=True, help="Images offered in the options form (names); empty offers only `image`.")
    enable_options_form = Bool(True, config=True, help="Show the options form: the flavor/image form when more than one choice exists, the profile cards when `profiles` is set (off: the first profile the user may use).")
    profiles = List(config=True, help="""Profiles users choose from instead of the flavor/image form (empty: that form).

        Each profile is a dict. Common keys: `slug` (required; lower-case letters, digits, `-`, `_`),
        `display_name`, `description`, `placement` (required: "dedicated" = a VM of its own, "shared" = a
        container on a host of a pool), `image` (required: the VM image for dedicated, the container image for
        shared), `credits_per_day` (shown in the form), `groups` (JupyterHub group names) and `entitlements`
        (Check-in entitlement patterns, the syntax of CheckinAuthenticator.allowed_entitlements, matched against
        the entitlements in the user's auth_state with the authenticator's trust rules). A profile with neither
        `groups` nor `entitlements` is for everyone; otherwise for members of one of the groups or holders of
        a matching entitlement. Dedicated profiles need `flavor`; shared ones `pool`, `cpu_limit` (vCPUs) and
        `mem_limit` (bytes, or "2G", "512M"). The form shows only the profiles a user may use, and a start
        asking for another one (e.g. through the REST API with {"profile": "<slug>"}) is refused. A mistake
        (unknown key, missing image, shared without pool or limits, dedicated without flavor, a repeated slug)
        is an error naming the profile and the key when the hub configures the spawner. Example::

            c.OpenStackSpawner.profiles = [
                {"slug": "small-shared", "display_name": "Small (shared host)", "placement": "shared",
                 "pool": "default", "image": "jupyter/datascience-notebook", "cpu_limit": 1, "mem_limit": "2G",
                 "credits_per_day": 5},
                {"slug": "medium-vm", "display_name": "Medium VM", "placement": "dedicated",
                 "image": "ubuntu-24.04-jupyter", "flavor": "m1.medium", "credits_per_day": 40,
                 "entitlements": ["vo.example.eu:role=member"], "groups": ["vliz"]},
            ]""")

    @validate("profiles")
    def _validate_profiles(self, proposal):
        try:
            parse_profiles(proposal["value"])
        except ProfileConfigError as e:
            raise TraitError(f"{type(self).__name__}.{e}") from None
        return proposal["value"]

    # --- profiles and shared pools ---------------------------------------------------------
    pools = Dict(Dict(), config=True, help="""Shared Docker-host pools, by name: profiles with placement "shared" name one.

        Per pool (defaults in jhub_broker/spawner/pool/config.py): `flavor` (required) and `image`
        (a VM image with dockerd) of the hosts; `headroom` (free notebook slots kept ready),
        `idle_host_timeout` (s an empty host lives), `max_hosts`; `reserved_ram_mb` and `cpu_overcommit`
        (a host's room for notebooks: its flavor's RAM minus reserved_ram_mb, its vCPUs times
        cpu_overcommit, filled with the profiles' cpu_limit/mem_limit reservations); `docker_port`,
        `port_base` (notebooks listen on the host's address from this port up); `container_image`,
        `container_image_tar` (imported on the host when dockerd lacks the image); `read_only_binds`
        (host path -> container path); `singleuser_cmd`; `host_boot_timeout`.""")
    pool_ca_dir = Unicode("jhub-broker-pool-ca", config=True, help="""Directory (made 0700) of the hub's pool CA: its key (0600) signs each pool host's
        dockerd certificate and the hub's Docker client certificate. It must survive hub restarts (the hosts
        keep their certificates); relative paths are from the hub's working directory.""")

    @default("reaper_grace")
    def _reaper_grace_default(self):
        return self.boot_timeout + self.notebook_timeout + REAPER_MARGIN


# seconds beyond the longest spawn (boot_timeout + notebook_timeout) before an orphan may be reaped
REAPER_MARGIN = 300
