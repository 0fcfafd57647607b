#!/usr/bin/env python3
"""Runs on the VM at boot (written there by cloud-init): stdlib only, Python 3.6+.

1. redeems the one-time bootstrap secret at the hub for the notebook's
   environment (the hub API token never sits in user_data);
2. wipes the secret, writes TLS files if the hub uses internal SSL;
3. starts ``jupyterhub-singleuser`` as the unprivileged notebook user, under
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
        try:
            with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            if e.code == 403:
                say("the hub refused the bootstrap secret (spent or expired); not starting")
                sys.exit(3)
            say("hub answered %s, retrying" % e.code)
        except (urllib.error.URLError, OSError) as e:
            say("hub not reachable yet (%s), retrying" % getattr(e, "reason", e))
        if time.time() > deadline:
            say("gave up reaching the hub")
            sys.exit(4)
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
        ssl_dir = os.path.join(STATE_DIR, "ssl")
        os.makedirs(ssl_dir, mode=0o700, exist_ok=True)
        os.chown(ssl_dir, user.pw_uid, user.pw_gid)
        for name, var in (("key", "JUPYTERHUB_SSL_KEYFILE"), ("cert", "JUPYTERHUB_SSL_CERTFILE"),
                          ("ca", "JUPYTERHUB_SSL_CLIENT_CA")):
            if ssl_files.get(name):
                path = os.path.join(ssl_dir, name + ".pem")
                write_private(path, ssl_files[name], user)
                env[var] = path
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
    main()
