"""``jhub-broker demo``: the whole product on loopback in one command.

Started, in order (each as its own process, all on 127.0.0.1):

1. the local OpenStack cloud (``jhub-broker cloud``; state, ``clouds.yaml`` and VMs under the state dir);
2. the S3 server (moto, auth enforced) with the demo buckets and one IAM key per Check-in group;
3. the EGI Check-in stand-in (npm ``oidc-provider``) with the researcher accounts of
   ``jhub_broker/emulators/checkin/accounts.json`` and the hub registered as a client;
4. a real JupyterHub (``python -m jupyterhub -f <state>/jupyterhub_config.py``) with the
   OpenStackSpawner against the local cloud, the CheckinAuthenticator, S3 grants and the broker
   service with a ready ``example`` environment.

Ctrl-C (or SIGTERM) stops the hub first (it stops the users' servers, so their VMs are deleted), then the
stand-ins, then the cloud (SIGTERM: it stops whatever VMs are left).  ``--no-login`` (or a Check-in
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

from .cloud import CLOUD_NAME, CloudStartError, print_cli_help, start_demo_cloud, stop_demo_cloud

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
import os

from jhub_broker.services.config import service_config

c = get_config()  # noqa: F821
STATE = {state!r}


def secret(name):
    with open(os.path.join(STATE, "secrets", name)) as f:
        return f.read().strip()


# -- hub and proxy
c.JupyterHub.bind_url = "http://127.0.0.1:{port}/"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.ConfigurableHTTPProxy.pid_file = os.path.join(STATE, "jupyterhub-proxy.pid")
c.JupyterHub.db_url = "sqlite:///" + os.path.join(STATE, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(STATE, "secrets", "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # stopping the demo stops the users' servers: their VMs are deleted

# -- OpenStackSpawner against the local cloud
c.JupyterHub.spawner_class = "openstack"
c.OpenStackSpawner.cloud = {cloud_name!r}
c.OpenStackSpawner.clouds_yaml = {clouds_yaml!r}
c.OpenStackSpawner.hub_id = {hub_id!r}
c.OpenStackSpawner.image = {image!r}
c.OpenStackSpawner.flavor = {flavor!r}
c.OpenStackSpawner.flavor_choices = {flavors!r}
c.OpenStackSpawner.volume_size = 1
c.OpenStackSpawner.floating_ip_pool = "public"
c.OpenStackSpawner.cache_interval = 5
c.OpenStackSpawner.boot_timeout = 180
c.OpenStackSpawner.notebook_timeout = 240
c.Spawner.start_timeout = 480
c.Spawner.http_timeout = 240
'''

CHECKIN_TEMPLATE = '''
# -- login through the EGI Check-in stand-in; groups from entitlements; S3 grants
c.JupyterHub.authenticator_class = "egi-checkin"
c.Authenticator.auto_login = True  # /hub/login goes straight to Check-in
c.Authenticator.allow_all = False
c.CheckinAuthenticator.issuer = {issuer!r}
c.CheckinAuthenticator.client_id = {client_id!r}
c.CheckinAuthenticator.client_secret = secret("checkin-client-secret")
c.CheckinAuthenticator.oauth_callback_url = "http://127.0.0.1:{port}/hub/oauth_callback"
c.CheckinAuthenticator.allowed_entitlements = ["vo.example.eu"]
c.CheckinAuthenticator.admin_entitlements = ["vo.example.eu:role=manager"]
c.CheckinAuthenticator.enrolment_url = {enrol!r}
'''

S3_TEMPLATE = '''c.CheckinAuthenticator.s3_endpoints = {{{endpoint!r}: {{
    "backend": "static", "url": {url!r}, "region": "us-east-1",
    "secrets_file": os.path.join(STATE, "secrets", "s3-keys.yaml")}}}}
c.CheckinAuthenticator.s3_grants = {grants!r}
'''

DUMMY_TEMPLATE = '''
# -- no login: JupyterHub's DummyAuthenticator (any name, no password; loopback only)
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {"admin"}
'''

SERVICE_TEMPLATE = '''
# -- the broker service with a ready example environment (Services menu)
service_config(c, environments_root=os.path.join(STATE, "environments"),
               initial_environments={envs!r}, extra_args={extra!r})
'''


def _others_can_traverse(path):
    """Whether every directory down to ``path`` lets other users through (o+x)."""
    path = os.path.abspath(path)
    while True:
        try:
            if not os.stat(path).st_mode & 0o001:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


def write_hub_config(state_dir, port, clouds_yaml, checkin=None, s3=None):
    chp = shutil.which("configurable-http-proxy") or "configurable-http-proxy"
    text = CONFIG_TEMPLATE.format(state=state_dir, port=port, hub_port=free_port(), proxy_api_port=free_port(),
                                  chp=chp, cloud_name=CLOUD_NAME, clouds_yaml=clouds_yaml, hub_id=HUB_ID,
                                  image=IMAGE, flavor=FLAVORS[0], flavors=FLAVORS)
    if checkin is not None:
        text += CHECKIN_TEMPLATE.format(issuer=checkin.issuer, client_id=CLIENT_ID, port=port, enrol=ENROL_URL)
        if s3 is not None:
            text += S3_TEMPLATE.format(endpoint=S3_ENDPOINT, url=s3.url, grants=S3_GRANTS)
    else:
        text += DUMMY_TEMPLATE
    extra = []
    if os.geteuid() == 0 and not _others_can_traverse(state_dir):
        # run as root under a private directory (e.g. ~root): the service's smoke test cannot run as
        # 'nobody' there, so it runs as the demo's own user (the VMs build their own copies anyway)
        extra.append("--BrokerService.smoke_test_user=")
    text += SERVICE_TEMPLATE.format(envs=EXAMPLE_ENVIRONMENTS, extra=extra)
    path = os.path.join(state_dir, "jupyterhub_config.py")
    with open(path, "w") as f:
        f.write(text)
    return path


def _log_tail(path, chars=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def start_hub(state_dir, config_path, port, crypt_key, timeout=180, stop_flag=None):
    env = dict(os.environ, JUPYTERHUB_CRYPT_KEY=crypt_key)
    env["PATH"] = _node_bin() + os.pathsep + env.get("PATH", "")
    log_path = os.path.join(state_dir, "jupyterhub.log")
    with open(log_path, "ab") as log:
        # own session: the demo forwards Ctrl-C once, and waits for the hub's orderly shutdown
        proc = subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", config_path], cwd=state_dir, env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
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
    """SIGINT: JupyterHub stops every user's server (VMs deleted), its services and its proxy."""
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
    print("Press Ctrl-C to stop everything (the hub deletes the users' VMs, then the cloud stops).", flush=True)


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
    cloud_proc = moto = checkin = hub = None
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
            if hub is not None and hub.poll() is not None:
                _warn(f"JupyterHub exited (status {hub.returncode}); see {state_dir}/jupyterhub.log")
                status = 1
                break
            time.sleep(0.5)
    except RuntimeError as e:
        _warn(str(e))
        status = 1
    finally:
        # a second Ctrl-C during shutdown must not leave VMs behind: keep going
        if hub is not None:
            _say("stopping JupyterHub (and the users' servers) ...")
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
