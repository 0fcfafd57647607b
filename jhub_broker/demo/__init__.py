"""``jhub-broker demo``: the whole product on loopback in one command.

Started, in order (each as its own process, all on 127.0.0.1):

1. the local OpenStack cloud (``jhub-broker cloud``; state, ``clouds.yaml`` and VMs under the state dir);
2. the S3 server (moto, auth enforced) with the demo buckets and one IAM key per Check-in group;
3. the EGI Check-in stand-in (npm ``oidc-provider``) with the researcher accounts of
   ``jhub_broker/emulators/checkin/accounts.json`` and the hub registered as a client;
4. a real JupyterHub (``python -m jupyterhub -f <state>/jupyterhub_config.py``) set up by the product's own
   ``jhub_broker.configure(c, ...)``: the OpenStackSpawner against the local cloud (VMs sync the broker's
   environments), the live CheckinAuthenticator with S3 grants, and the broker service with a ready ``example``
   environment and the authentication admin pages (bootstrap admin ``bob@egi.eu``).

The login-method page restarts the hub through this supervisor (``python -m jhub_broker.demo.restart``, SIGUSR1):
it stops the hub, leaving the users' VMs running for the new hub to adopt, launches it again and answers once the
new hub serves (exit 0) or has exited (exit 1, so the broker rolls back at once); a hub that exits after a restart
is waited for while the broker rolls the configuration back.

Ctrl-C (or SIGTERM) first stops every user's server through the hub API (their VMs are deleted), then the hub,
the stand-ins, and the cloud (SIGTERM: it stops whatever VMs are left).  ``--no-login`` (or a Check-in
stand-in that fails to start) uses JupyterHub's DummyAuthenticator instead: any name, no password.

Secrets (the OIDC client secret, the hub's crypt key, the S3 group keys) are generated into
``<state>/secrets`` (mode 0600) and never printed; the researcher passwords printed in the banner are the
stand-in's public demo passwords.
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from ..services.environments.builder import others_can_traverse
from .cloud import CLOUD_NAME, CloudStartError, _log_tail, print_cli_help, start_demo_cloud, stop_demo_cloud

HERE = os.path.dirname(os.path.abspath(__file__))
HUB_ID = "demo"
CLIENT_ID = "jupyterhub-demo"
IMAGE = "ubuntu-24.04-jupyter"
FLAVORS = ["m1.small", "m1.medium", "m1.large"]
ENROL_URL = "https://aai.egi.eu/registry/co_petitions/start/coef:vo.example.eu"
S3_ENDPOINT = "demo"
BUCKETS = ["reference-data", "analysis-private", "ifremer-private", "other-vo"]
S3_GRANTS = [
    {"bucket": "reference-data", "level": "read", "groups": ["vo.example.eu"]},
    {"bucket": "analysis-private", "level": "write", "groups": ["vo.example.eu:analysis"]},
    {"bucket": "ifremer-private", "level": "write", "groups": ["vo.example.eu:ifremer"]},
    {"bucket": "other-vo", "level": "read", "groups": ["vo.other.eu"]},
]
RESTART_GRACE = 300  # seconds after a restart in which a hub that exits is waited for (rollback), not fatal
EXAMPLE_ENVIRONMENTS = [{"name": "example", "requirements": ["six"], "display_name": "Python 3 (example)"}]


def _say(msg=""):
    print(msg, flush=True)


def _warn(msg):
    print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(port, host="127.0.0.1"):
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _node_bin():
    from ..emulators.checkin import default_node_modules
    return os.path.join(default_node_modules(), ".bin")


def _write_secret(path, value=None, nbytes=32):
    """Read ``path`` if it exists (a restarted demo keeps its secrets), else write a new one, mode 0600."""
    if value is None and os.path.exists(path):
        with open(path) as f:
            old = f.read().strip()
        if old:
            return old
    value = value if value is not None else secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    return value


def _private_file(path):
    """Create ``path`` if missing; either way mode 0600 (logs and the hub's database hold users' data)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    return path


def _crypt_key(state_dir):
    """The hub's auth_state key (32 bytes, hex), kept across demo restarts."""
    path = os.path.join(state_dir, "secrets", "jupyterhub-crypt-key")
    if not os.path.exists(path):
        return _write_secret(path, secrets.token_hex(32))
    return _write_secret(path)


def _answers(url, timeout=2):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


# -- parts ---------------------------------------------------------------------------------------
def start_s3(state_dir):
    """moto with the demo buckets, one IAM user per group with exactly that group's grants, auth on.

    Returns ``(moto, secrets_file)``.
    """
    import yaml
    from ..authenticator.rules import AccessRules
    from ..authenticator.s3.grants import resolve_grants
    from ..authenticator.s3.policy import policy_for
    from ..emulators.s3 import MotoS3

    moto = MotoS3(os.path.join(state_dir, "s3")).start()
    try:
        rules = AccessRules()
        users, key_of = {}, {}
        for g in S3_GRANTS:
            group = g["groups"][0]
            grants = resolve_grants([g], {group}, (), rules, S3_ENDPOINT)
            name = "grp-" + group.replace(":", "-")
            users[name] = policy_for(grants)
            key_of[group] = name
        keys = moto.setup(BUCKETS, users)
        moto.enforce_auth()
        path = os.path.join(state_dir, "secrets", "s3-keys.yaml")
        _write_secret(path, yaml.safe_dump({"keys": {group: keys[name] for group, name in key_of.items()}}))
    except BaseException:
        moto.stop()
        raise
    return moto, path


def start_checkin(state_dir, hub_port, client_secret):
    from ..emulators.checkin import CheckinStandIn
    redirect = f"http://127.0.0.1:{hub_port}/hub/oauth_callback"
    s = CheckinStandIn([{"client_id": CLIENT_ID, "client_secret": client_secret, "redirect_uris": [redirect]}],
                       os.path.join(state_dir, "checkin"))
    return s.start()


def accounts():
    from ..emulators.checkin import ACCOUNTS_FILE
    with open(ACCOUNTS_FILE) as f:
        return json.load(f)["accounts"]


CONFIG_TEMPLATE = '''\
# Written by `jhub-broker demo`; rewritten at every start.  Everything runs on 127.0.0.1.
# The product's own one-call setup (jhub_broker.configure) with the demo's local parts; the login-method page of
# the broker service writes its fragments to {state}/conf.d (loaded inside configure) and restarts the hub
# through the demo (`python -m jhub_broker.demo.restart`).
import os
import sys

import jhub_broker

c = get_config()  # noqa: F821
STATE = {state!r}


def secret(name):
    with open(os.path.join(STATE, "secrets", name)) as f:
        return f.read().strip()


jhub_broker.configure(
    c,
    spawner="openstack", cloud={cloud_name!r}, image={image!r}, flavor={flavor!r},
    spawner_options={{
        "clouds_yaml": {clouds_yaml!r},
        "hub_id": {hub_id!r},
        "flavor_choices": {flavors!r},
        "volume_size": 1,
        "floating_ip_pool": "public",
        "cache_interval": 5,
        "boot_timeout": 180,
        "notebook_timeout": 240,
        # the VMs build the broker's published environments and list them as kernels
        "environments_service_url": "http://127.0.0.1:{port}/services/broker/",
    }},
{auth}
    environments_root=os.path.join(STATE, "environments"),
    initial_environments={envs!r},
    auth_config_dir=os.path.join(STATE, "conf.d"),
    restart_command=[sys.executable, "-m", "jhub_broker.demo.restart", STATE],
    restart_timeout=120,
    service_args={extra!r},
)

# -- hub and proxy
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = os.path.join(STATE, "jupyterhub-proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(STATE, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "secrets", "jupyterhub_cookie_secret")
c.Spawner.start_timeout = 480
c.Spawner.http_timeout = 240

# -- the demo's supervisor stops every user's server (so their VMs are deleted) before it stops the hub;
#    a restart from the login-method page keeps them running and the new hub adopts them
c.JupyterHub.services.append({{"name": "demo-supervisor", "api_token": secret("demo-supervisor-token")}})
c.JupyterHub.load_roles.append({{"name": "demo-supervisor", "services": ["demo-supervisor"],
                                 "scopes": ["list:users", "read:users", "read:servers", "admin:servers"]}})
'''

CHECKIN_AUTH = '''\
    # login through the EGI Check-in stand-in; groups and admin from entitlements; S3 grants
    authenticator="egi-checkin",
    auth_options={{
        "issuer": {issuer!r},
        "client_id": {client_id!r},
        "client_secret": secret("checkin-client-secret"),
        "oauth_callback_url": "http://127.0.0.1:{port}/hub/oauth_callback",
        "allowed_entitlements": ["vo.example.eu"],
        "admin_entitlements": ["vo.example.eu:role=manager"],
        "enrolment_url": {enrol!r},
{s3}    }},
    admin_users=["bob@egi.eu"],  # the bootstrap admin (also a VO manager)
'''

S3_OPTIONS = '''\
        "s3_endpoints": {{{endpoint!r}: {{
            "backend": "static", "url": {url!r}, "region": "us-east-1",
            "secrets_file": os.path.join(STATE, "secrets", "s3-keys.yaml")}}}},
        "s3_grants": {grants!r},
'''

DUMMY_AUTH = '''\
    # no login: any name, no password (loopback only); 'admin' is admin
    authenticator="dummy", admin_users=["admin"],
'''

CHECKIN_EXTRA = '''
c.Authenticator.auto_login = True  # /hub/login goes straight to Check-in
'''

DUMMY_EXTRA = '''
c.Authenticator.allow_all = True
'''


def write_hub_config(state_dir, port, clouds_yaml, checkin=None, s3=None):
    chp = shutil.which("configurable-http-proxy") or "configurable-http-proxy"
    _write_secret(os.path.join(state_dir, "secrets", "demo-supervisor-token"))
    if checkin is not None:
        s3_text = S3_OPTIONS.format(endpoint=S3_ENDPOINT, url=s3.url, grants=S3_GRANTS) if s3 is not None else ""
        auth = CHECKIN_AUTH.format(issuer=checkin.issuer, client_id=CLIENT_ID, port=port, enrol=ENROL_URL,
                                   s3=s3_text)
    else:
        auth = DUMMY_AUTH
    extra = ["--BrokerService.allow_insecure_login_methods=True"]  # a demo may switch to Dummy login
    if os.geteuid() == 0 and not others_can_traverse(state_dir):
        # run as root under a private directory (e.g. ~root): the service's builds and smoke test cannot run
        # as 'nobody' there, so they run as the demo's own user (still without the service's token or key)
        extra += ["--BrokerService.smoke_test_user=", "--BrokerService.build_user="]
    text = CONFIG_TEMPLATE.format(state=state_dir, port=port, hub_port=free_port(), proxy_api_port=free_port(),
                                  chp=chp, cloud_name=CLOUD_NAME, clouds_yaml=clouds_yaml, hub_id=HUB_ID,
                                  image=IMAGE, flavor=FLAVORS[0], flavors=FLAVORS, auth=auth.rstrip("\n"),
                                  envs=EXAMPLE_ENVIRONMENTS, extra=extra)
    text += CHECKIN_EXTRA if checkin is not None else DUMMY_EXTRA
    path = os.path.join(state_dir, "jupyterhub_config.py")
    tmp = path + ".tmp"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def launch_hub(state_dir, config_path, crypt_key):
    """Start ``python -m jupyterhub`` in its own session; returns ``(proc, log_path)`` without waiting."""
    env = dict(os.environ, JUPYTERHUB_CRYPT_KEY=crypt_key)
    env["PATH"] = _node_bin() + os.pathsep + env.get("PATH", "")
    log_path = _private_file(os.path.join(state_dir, "jupyterhub.log"))
    # the hub creates its database with the default mode (0644): made first, it keeps 0600 (SQLite's journals too)
    _private_file(os.path.join(state_dir, "jupyterhub.sqlite"))
    with open(log_path, "ab") as log:
        # own session: the demo forwards Ctrl-C once, and waits for the hub's orderly shutdown
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", config_path], cwd=state_dir, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return proc, log_path


def start_hub(state_dir, config_path, port, crypt_key, timeout=180, stop_flag=None):
    proc, log_path = launch_hub(state_dir, config_path, crypt_key)
    url = f"http://127.0.0.1:{port}/hub/api/"
    deadline = time.monotonic() + timeout
    while _answers(url) != 200:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterHub exited with status {proc.returncode}; {log_path}:\n{_log_tail(log_path)}")
        if time.monotonic() > deadline or (stop_flag and stop_flag()):
            stop_hub(proc, state_dir)
            raise RuntimeError(f"JupyterHub did not answer within {timeout}s; {log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.3)
    return proc, log_path


def _hub_api(port, token, method, path, timeout=30):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/hub/api{path}", method=method,
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
    return json.loads(body) if body else None


def stop_user_servers(state_dir, port, timeout=240):
    """Stop every user's server through the hub API (their VMs are deleted); waits until none is left."""
    from urllib.parse import quote

    def running_servers():
        users = _hub_api(port, token, "GET", "/users?state=active")
        return [(u["name"], name) for u in users for name in (u.get("servers") or {})]
    try:
        with open(os.path.join(state_dir, "secrets", "demo-supervisor-token")) as f:
            token = f.read().strip()
        running = running_servers()
    except (OSError, ValueError) as e:
        _warn(f"cannot list the users' servers ({e}); the cloud's shutdown removes their VMs")
        return
    for user, name in running:
        path = f"/users/{quote(user, safe='')}/servers/{quote(name, safe='')}" if name else \
            f"/users/{quote(user, safe='')}/server"
        try:
            _hub_api(port, token, "DELETE", path)
            _say(f"  stopping {user}'s server{(' ' + name) if name else ''} ...")
        except (OSError, ValueError) as e:
            _warn(f"cannot stop {user}'s server: {e}")
    deadline = time.monotonic() + timeout
    while running and time.monotonic() < deadline:
        time.sleep(1)
        try:
            running = running_servers()
        except (OSError, ValueError):
            return


class _RestartRequests:
    """SIGUSR1 from ``python -m jhub_broker.demo.restart``: restart the hub, answer each request file."""

    def __init__(self, state_dir):
        from .restart import PID_FILE, REQUESTS
        self.dir = os.path.join(state_dir, REQUESTS)
        self.pid_file = os.path.join(state_dir, PID_FILE)
        self.flag = False
        self.last = None  # monotonic time of the last restart
        self.waiting = []  # request files to answer once the new hub serves or fails

    def install(self):
        os.makedirs(self.dir, exist_ok=True)
        for name in os.listdir(self.dir):  # answers nobody waits for any more
            os.unlink(os.path.join(self.dir, name))
        with open(self.pid_file, "w") as f:
            f.write(str(os.getpid()))
        return signal.signal(signal.SIGUSR1, self._signal)

    def _signal(self, signum, frame):
        self.flag = True

    def pending(self):
        if not self.flag:
            return []
        self.flag = False
        return [n for n in os.listdir(self.dir) if not n.endswith(".done")]

    def answer(self, result):
        """Answer every waiting request with ``result``."""
        for n in self.waiting:
            tmp = os.path.join(self.dir, n + ".tmp")
            with open(tmp, "w") as f:
                f.write(result)
            os.replace(tmp, os.path.join(self.dir, n + ".done"))
            os.unlink(os.path.join(self.dir, n))
        self.waiting = []

    def recent(self, window):
        return self.last is not None and time.monotonic() - self.last < window

    def remove(self):
        try:
            os.unlink(self.pid_file)
        except OSError:
            pass


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _terminate_pid(pid, timeout=10):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stop_hub(proc, state_dir, timeout=120):
    """SIGINT: JupyterHub stops its services and its proxy (users' servers stay: ``cleanup_servers`` is off)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _warn("JupyterHub did not stop in time; terminating it")
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    # the proxy runs in a session of its own: make sure it went with the hub
    pid_file = os.path.join(state_dir, "jupyterhub-proxy.pid")
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        pid = None
    if pid and _pid_alive(pid) and "configurable-http-proxy" in _cmdline(pid):
        _warn(f"the proxy (pid {pid}) outlived the hub; stopping it")
        _terminate_pid(pid)
    return proc.returncode


def _leftovers(state_dir):
    """Processes (other than this one) whose command line names the state dir: the hub's services."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me and state_dir in _cmdline(int(entry)):
            out.append(int(entry))
    return out


def banner(port, clouds_yaml, base_url, checkin=None, s3=None, log_path=None):
    hub = f"http://127.0.0.1:{port}/"
    lines = ["", "=" * 78, f"  jhub_broker demo: JupyterHub at {hub}", "=" * 78]
    if checkin is not None:
        lines += ["", f"Log in through the EGI Check-in stand-in ({checkin.issuer}) as a researcher:"]
        for a in accounts():
            note = {"alice": "member of vo.example.eu and vo.example.eu:analysis",
                    "bob": "manager of vo.example.eu (hub admin), member of vo.other.eu",
                    "carol": "not in vo.example.eu: sees the refusal page",
                    "dave": "member of vo.example.eu and vo.example.eu:ifremer"}.get(a["username"], "")
            lines.append(f"  {a['username']:<7} password {a['password']:<10} {note}")
    else:
        lines += ["", "Login: no Check-in (DummyAuthenticator): any user name, no password; 'admin' is admin."]
    lines += ["", f"Start a server: pick a flavor ({', '.join(FLAVORS)}); it boots a VM ({IMAGE}) in the local",
              "cloud with a 1 GB data volume and a floating IP from 'public'; the notebook is proxied by the hub."]
    if s3 is not None:
        lines += [f"S3 (moto) at {s3.url}: buckets {', '.join(BUCKETS)}; each group's server gets credentials for",
                  "exactly its grants (boto3.client('s3') / s3fs work inside the notebook)."]
    lines += ["Broker service (Services menu): shared Python environments; an 'example' environment is built at start."]
    if log_path:
        lines += [f"Hub log: {log_path}"]
    print("\n".join(lines), flush=True)
    print_cli_help(clouds_yaml, base_url)
    print("Press Ctrl-C to stop everything (the users' servers first: their VMs are deleted; then the hub and the cloud).", flush=True)


# -- the command -----------------------------------------------------------------------------------
class _Stop:
    def __init__(self):
        self.requested = 0

    def __call__(self, signum, frame):
        self.requested += 1
        if self.requested == 1:
            print("\nstopping the demo ...", file=sys.stderr, flush=True)

    def __bool__(self):
        return self.requested > 0


def run_demo(args):
    state_dir = os.path.abspath(os.path.expanduser(args.state_dir))
    # the state dir stays traversable: the broker service smoke-tests environments as an unprivileged user
    # (nobody, when the demo runs as root); secrets live in secrets/ and checkin/, both 0700
    os.makedirs(state_dir, exist_ok=True)
    os.chmod(state_dir, 0o711)  # others may pass through (to environments/), not list
    for private in ("secrets", "checkin"):
        os.makedirs(os.path.join(state_dir, private), mode=0o700, exist_ok=True)
        os.chmod(os.path.join(state_dir, private), 0o700)
    port = int(args.port)
    cloud_only = bool(getattr(args, "cloud_only", False))
    no_login = bool(getattr(args, "no_login", False))
    if not cloud_only and not _port_free(port):
        sys.exit(f"jhub-broker demo: port {port} on 127.0.0.1 is in use; choose another with --port")
    import logging
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ["PATH"] = _node_bin() + os.pathsep + os.environ.get("PATH", "")

    stop = _Stop()
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    restarts = _RestartRequests(state_dir)
    old[signal.SIGUSR1] = restarts.install()
    cloud_proc = moto = checkin = hub = None
    crypt_key = config_path = None
    status = 0
    try:
        _say(f"starting the local OpenStack cloud (state in {state_dir}) ...")
        try:
            cloud_proc, clouds_yaml, base_url = start_demo_cloud(state_dir)
        except CloudStartError as e:
            sys.exit(f"jhub-broker demo: {e}")
        if cloud_only:
            print_cli_help(clouds_yaml, base_url)
            _say("Press Ctrl-C to stop the cloud (and its VMs).")
        else:
            if not no_login:
                _say("starting the S3 server (moto) with the demo buckets ...")
                try:
                    moto, _ = start_s3(state_dir)
                except Exception as e:  # noqa: BLE001 - the demo still works without S3
                    _warn(f"the S3 server did not start ({e}); servers get no S3 credentials")
                    moto = None
                _say("starting the EGI Check-in stand-in ...")
                client_secret = _write_secret(os.path.join(state_dir, "secrets", "checkin-client-secret"))
                try:
                    checkin = start_checkin(state_dir, port, client_secret)
                except Exception as e:  # noqa: BLE001
                    why = [line for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
                    _warn(f"the Check-in stand-in did not start ({why[-1].strip()[:200]}; log in "
                          f"{state_dir}/checkin/checkin.log); falling back to "
                          "--no-login (DummyAuthenticator: any name, no password). Install the stand-in with "
                          "`npm ci --prefix share/node`.")
                    checkin = None
                    if moto is not None:  # grants need Check-in groups
                        moto.stop()
                        moto = None
            crypt_key = _crypt_key(state_dir)
            config_path = write_hub_config(state_dir, port, clouds_yaml, checkin, moto)
            _say(f"starting JupyterHub ({config_path}) ...")
            hub, log_path = start_hub(state_dir, config_path, port, crypt_key, stop_flag=lambda: bool(stop))
            banner(port, clouds_yaml, base_url, checkin, moto, log_path)
        while not stop:
            if cloud_proc.poll() is not None:
                _warn(f"the local cloud exited (status {cloud_proc.returncode}); see {state_dir}/cloud.log")
                status = 1
                break
            asked = restarts.pending()
            if asked and config_path is not None:
                _say("restarting JupyterHub (asked by the broker's login-method page) ...")
                if hub is not None:
                    stop_hub(hub, state_dir)
                hub, _ = launch_hub(state_dir, config_path, crypt_key)
                restarts.last = time.monotonic()
                restarts.waiting += asked
            if restarts.waiting:
                # like `systemctl restart` of a notify unit: answer once the new hub serves, or has failed
                if hub is None or hub.poll() is not None:
                    code = None if hub is None else hub.returncode
                    restarts.answer(f"the new hub exited (status {code}); see {state_dir}/jupyterhub.log")
                elif _answers(f"http://127.0.0.1:{port}/hub/api/") == 200:
                    restarts.answer("ok")
                elif not restarts.recent(RESTART_GRACE / 2):
                    restarts.answer("the new hub did not answer in time")
            if hub is not None and hub.poll() is not None:
                if restarts.recent(RESTART_GRACE):
                    # a new config that does not start: the broker's restart helper rolls it back and asks again
                    _warn(f"JupyterHub exited (status {hub.returncode}) after a restart; waiting for the "
                          f"broker to roll the configuration back (see {state_dir}/jupyterhub.log)")
                    hub = None
                    continue
                _warn(f"JupyterHub exited (status {hub.returncode}); see {state_dir}/jupyterhub.log")
                status = 1
                break
            if hub is None and restarts.last is not None and not restarts.recent(RESTART_GRACE):
                _warn("JupyterHub did not come back after a restart; stopping the demo")
                status = 1
                break
            time.sleep(0.5)
    except RuntimeError as e:
        _warn(str(e))
        status = 1
    finally:
        # a second Ctrl-C during shutdown must not leave VMs behind: keep going
        restarts.remove()
        if hub is not None:
            if hub.poll() is None:
                _say("stopping the users' servers (their VMs are deleted) ...")
                stop_user_servers(state_dir, port)
            _say("stopping JupyterHub ...")
            stop_hub(hub, state_dir)
        for part in (checkin, moto):
            if part is not None:
                part.stop()
        if cloud_proc is not None:
            _say("stopping the local cloud (and its VMs) ...")
            stop_demo_cloud(cloud_proc)
        for pid in _leftovers(state_dir):
            _warn(f"stopping leftover process {pid}: {_cmdline(pid)[:120]}")
            _terminate_pid(pid)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        _say("demo stopped.")
    if status:
        sys.exit(status)
