#!/usr/bin/env python3
"""Runs on the VM at boot (written there by cloud-init): stdlib only, Python 3.6+.

1. redeems the one-time bootstrap secret at the hub for the notebook's
   environment (the hub API token never sits in user_data);
2. wipes the secret, writes TLS files if the hub uses internal SSL; writes the AWS config of the
   S3 profiles the hub granted (``JHUB_BROKER_AWS_CONFIG``; named profiles call the
   ``jhub-broker-s3-credentials`` helper cloud-init wrote) and puts the helper first on PATH;
3. when the hub configured it (``environments`` in the config), builds the broker service's
   published environments with the broker's own sync code (written by cloud-init under
   ``environments.pkg_dir``), reading the service with the notebook's API token, and puts their
   kernelspecs' data dir on the notebook's JUPYTER_PATH; a background loop re-syncs every
   ``environments.interval`` seconds (``agent.py --resync-loop``);
4. starts ``jupyterhub-singleuser`` as the unprivileged notebook user, under
   systemd when the VM runs it, else as a daemon.
"""
import json
import os
import pwd
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

CONFIG = "/etc/jhub-broker/bootstrap.json"
STATE_DIR = "/etc/jhub-broker"
# internal_ssl: the notebook's key, certificate and client-CA bundle from the bootstrap payload's
# "ssl" slot, and the env vars pointing at them (the spawner hands the hub these same paths)
SSL_DIR = os.path.join(STATE_DIR, "ssl")
SSL_FILES = (("key", "JUPYTERHUB_SSL_KEYFILE"), ("cert", "JUPYTERHUB_SSL_CERTFILE"),
             ("ca", "JUPYTERHUB_SSL_CLIENT_CA"))


def say(msg):
    print("jhub-broker-agent: " + msg, flush=True)


def redeem(cfg):
    body = json.dumps({"secret": cfg["secret"]}).encode()
    ctx = None
    if cfg.get("hub_ca"):
        ctx = ssl.create_default_context(cadata=cfg["hub_ca"])
    deadline = time.time() + float(cfg.get("redeem_timeout", 600))
    delay = 0.2
    while True:
        req = urllib.request.Request(cfg["url"], data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        wait = None
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            if e.code == 403:
                say("the hub refused the bootstrap secret (spent or expired); not starting")
                sys.exit(3)
            if e.code == 503 and e.headers.get("Retry-After"):
                # the hub is still completing this VM's settings (e.g. signing its certificate)
                try:
                    wait = min(max(float(e.headers["Retry-After"]), 0.1), 30)
                except ValueError:
                    wait = None
            say("hub answered %s, retrying" % e.code)
        except (urllib.error.URLError, OSError) as e:
            say("hub not reachable yet (%s), retrying" % getattr(e, "reason", e))
        if time.time() > deadline:
            say("gave up reaching the hub")
            sys.exit(4)
        if wait is not None:
            time.sleep(wait)
            continue
        time.sleep(delay)
        delay = min(delay * 2, 5)


def wipe_secret(cfg):
    cfg = dict(cfg, secret="")
    tmp = CONFIG + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    os.replace(tmp, CONFIG)


def write_private(path, content, user):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    os.chown(path, user.pw_uid, user.pw_gid)


ENV_TOKEN = os.path.join(STATE_DIR, "environments.token")
ENV_LOG = "/var/log/jhub-broker-environments.log"
TOOLS_VENV = "/var/lib/jhub-broker/tools"
TOOL_CHECK = "import packaging, virtualenv"
SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"


def _runs(python, code):
    try:
        return subprocess.run([python, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def tool_python(ec, singleuser_exe):
    """A Python with packaging and virtualenv for the sync: the image's (baked) venv, else one made here."""
    candidates = [os.path.join(os.path.dirname(singleuser_exe), "python")] if singleuser_exe else []
    candidates.append(os.path.join(TOOLS_VENV, "bin", "python"))
    for py in candidates:
        if os.access(py, os.X_OK) and _runs(py, TOOL_CHECK):
            return py
    say("no Python with packaging and virtualenv on this image; installing them into " + TOOLS_VENV)
    py = os.path.join(TOOLS_VENV, "bin", "python")
    env = dict(os.environ, **(ec.get("env") or {}))
    try:
        subprocess.run(["/usr/bin/python3", "-m", "venv", TOOLS_VENV], check=True, timeout=300)
        subprocess.run([py, "-m", "pip", "install", "-q"] + (ec.get("tool_packages") or "packaging virtualenv").split(),
                       check=True, timeout=600, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        say("could not install the environment tools: %s" % e)
        return None
    return py if _runs(py, TOOL_CHECK) else None


def run_sync(ec, python, timeout):
    """One run of the broker's sync (fetch lockfiles, build what changed, write kernelspecs)."""
    cmd = [python, "-m", "jhub_broker.services.environments.sync", "--service-url", ec["service_url"],
           "--token-file", ENV_TOKEN, "--root", ec["root"], "--jupyter-data-dir", ec["data_dir"],
           "--installer", ec.get("installer") or "auto"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    if os.path.isfile(SYSTEM_CA):
        # the VM's own CA store (with the site's CAs), not uv's/pip's bundled roots
        env.setdefault("SSL_CERT_FILE", SYSTEM_CA)
        env.setdefault("PIP_CERT", SYSTEM_CA)
    env.update(ec.get("env") or {})
    env["PYTHONPATH"] = ec["pkg_dir"]
    env.setdefault("HOME", "/root")
    with open(ENV_LOG, "a") as log:
        log.write("==== sync at %s\n" % time.strftime("%Y-%m-%d %H:%M:%S"))
        log.flush()
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd="/", timeout=timeout)
            return proc.returncode
        except subprocess.TimeoutExpired:
            log.write("sync did not finish within %d s\n" % timeout)
            return None
        except OSError as e:
            log.write("sync could not run: %s\n" % e)
            return None


def sync_environments(cfg, env, singleuser_exe):
    """Build the service's environments before the notebook starts; never keeps the notebook from starting."""
    ec = cfg.get("environments")
    if not ec:
        return
    paths = [p for p in env.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    env["JUPYTER_PATH"] = os.pathsep.join([ec["data_dir"]] + [p for p in paths if p != ec["data_dir"]])
    token = env.get("JUPYTERHUB_API_TOKEN")
    if not token:
        say("no API token to read the environments service with; skipping environments")
        return
    if not os.path.isfile(os.path.join(ec["pkg_dir"], "jhub_broker", "services", "environments", "sync.py")):
        say("the environment sync code is missing from %s (custom user_data template?); skipping" % ec["pkg_dir"])
        return
    fd = os.open(ENV_TOKEN, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    python = tool_python(ec, singleuser_exe)
    if python is None:
        say("cannot build environments (no packaging/virtualenv); starting the notebook without them")
        return
    started = time.time()
    say("building the shared environments from %s (log: %s)" % (ec["service_url"], ENV_LOG))
    rc = run_sync(ec, python, float(ec.get("timeout") or 480))
    say("environments %s after %.0f s" % ("ready" if rc == 0 else "incomplete (status %s; see %s)" % (rc, ENV_LOG),
                                          time.time() - started))
    if rc != 0:
        try:
            with open(ENV_LOG, errors="replace") as f:
                tail = f.readlines()[-15:]
        except OSError:
            tail = []
        for line in tail:
            say("  " + line.rstrip())
    if float(ec.get("interval") or 0) > 0:
        with open(os.path.join(STATE_DIR, "environments.json"), "w") as f:
            json.dump(dict(ec, python=python), f)
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "--resync-loop"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")


def resync_loop():
    """Re-sync now and then, so environments changed (or deleted) on the service follow on this VM."""
    with open(os.path.join(STATE_DIR, "environments.json")) as f:
        ec = json.load(f)
    interval = float(ec["interval"])
    while os.path.exists(ENV_TOKEN):
        time.sleep(interval)
        run_sync(ec, ec["python"], max(interval, float(ec.get("timeout") or 480)))


S3_HELPER_DIR = "/var/lib/jhub-broker/bin"
S3_HELPER = os.path.join(S3_HELPER_DIR, "jhub-broker-s3-credentials")
S3_CONFIG = os.path.join(STATE_DIR, "aws-config")


def s3_setup(env, user):
    """S3 profiles from the hub (CheckinAuthenticator.s3_grants): the default profile needs nothing here
    (AWS_CONTAINER_CREDENTIALS_FULL_URI points at the hub); named profiles need the AWS config, whose
    ``credential_process = jhub-broker-s3-credentials --profile X`` runs the helper from user_data."""
    config = env.get("JHUB_BROKER_AWS_CONFIG")
    if config is None:
        return
    if os.path.isfile(S3_HELPER):
        os.chmod(S3_HELPER, 0o755)
        paths = [p for p in env.get("PATH", "").split(":") if p and p != S3_HELPER_DIR]
        env["PATH"] = ":".join([S3_HELPER_DIR] + paths)
    else:
        say("the S3 credential helper is missing from %s (custom user_data template?); "
            "named S3 profiles will not work, the default one will" % S3_HELPER_DIR)
    # the operator's path (CheckinAuthenticator.s3_config_file), else one outside the user's home
    path = env.get("AWS_CONFIG_FILE") or S3_CONFIG
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent)
        os.chown(parent, user.pw_uid, user.pw_gid)
    write_private(path, config, user)
    env["AWS_CONFIG_FILE"] = path
    say("S3 profiles written to %s" % path)


def find_singleuser(candidates):
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    return None


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    user = pwd.getpwnam(cfg["user"])
    home = cfg.get("notebook_dir") or user.pw_dir
    os.makedirs(home, exist_ok=True)
    st = os.stat(home)
    if st.st_uid != user.pw_uid:
        # a fresh data volume is owned by root
        os.chown(home, user.pw_uid, user.pw_gid)
    exe = find_singleuser(cfg["singleuser"])
    if exe is None:
        say("jupyterhub-singleuser not found in %s" % cfg["singleuser"])
        sys.exit(2)
    payload = redeem(cfg)
    wipe_secret(cfg)
    env = {"PATH": os.path.dirname(exe) + ":/usr/local/bin:/usr/bin:/bin", "HOME": user.pw_dir,
           "USER": user.pw_name, "SHELL": user.pw_shell or "/bin/sh", "LANG": "C.UTF-8"}
    env.update(payload.get("env", {}))
    ssl_files = payload.get("ssl") or {}
    if ssl_files:
        os.makedirs(SSL_DIR, mode=0o700, exist_ok=True)
        os.chmod(SSL_DIR, 0o700)
        os.chown(SSL_DIR, user.pw_uid, user.pw_gid)
        for name, var in SSL_FILES:
            if ssl_files.get(name):
                path = os.path.join(SSL_DIR, name + ".pem")
                write_private(path, ssl_files[name], user)
                env[var] = path
        say("TLS key and certificate for the notebook written to " + SSL_DIR)
    s3_setup(env, user)
    sync_environments(cfg, env, exe)
    argv = [exe, "--ip=0.0.0.0", "--port=%d" % int(payload.get("port", cfg.get("port", 8888))),
            "--notebook-dir=" + home] + list(payload.get("args", []))
    env_path = os.path.join(STATE_DIR, "notebook.env.json")
    write_private(env_path, json.dumps(env), user)
    if os.path.isdir("/run/systemd/system"):
        launcher = os.path.join(STATE_DIR, "launch.py")
        with open(launcher, "w") as f:
            f.write("import json, os\nenv = json.load(open(%r))\nargv = %r\nos.execve(argv[0], argv, env)\n"
                    % (env_path, argv))
        unit = ("[Unit]\nDescription=Jupyter notebook server (jhub_broker)\nAfter=network-online.target\n\n"
                "[Service]\nUser=%s\nWorkingDirectory=%s\nExecStart=%s %s\nRestart=on-failure\n\n"
                "[Install]\nWantedBy=multi-user.target\n") % (user.pw_name, home, sys.executable, launcher)
        with open("/etc/systemd/system/jhub-broker-notebook.service", "w") as f:
            f.write(unit)
        subprocess.check_call(["systemctl", "daemon-reload"])
        subprocess.check_call(["systemctl", "enable", "--now", "jhub-broker-notebook.service"])
        say("notebook server started by systemd")
        return
    pid = os.fork()
    if pid:
        say("notebook server started (pid %d) as %s" % (pid, user.pw_name))
        return
    os.setsid()
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.chdir(home)
    os.execve(argv[0], argv, env)


if __name__ == "__main__":
    if sys.argv[1:] == ["--resync-loop"]:
        resync_loop()
    else:
        main()
