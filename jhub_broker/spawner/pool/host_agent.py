#!/usr/bin/env python3
"""Runs on a pool host at boot (written there by cloud-init): stdlib only, Python 3.6+.

1. redeems the one-time bootstrap secret at the hub for the dockerd TLS material (the host's server
   key and certificate, the pool CA) and the address dockerd must listen on -- nothing secret sits in
   user_data -- then wipes the secret;
2. starts dockerd with ``--tlsverify`` on that address: only clients holding a certificate of the
   hub's pool CA (the hub) get in; a notebook container has none;
3. imports the notebook image from its tarball when dockerd does not have it (no registry needed).
"""
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

CONFIG = "/etc/jhub-broker/pool-host.json"
TLS_DIR = "/etc/docker/tls"
DOCKER = "/usr/bin/docker"  # docker.io's client; another `docker` earlier on PATH may be unrelated


def say(msg):
    print("jhub-broker-host: " + msg, flush=True)


def redeem(cfg):
    body = json.dumps({"secret": cfg["secret"]}).encode()
    deadline = time.time() + float(cfg.get("redeem_timeout", 600))
    while True:
        req = urllib.request.Request(cfg["url"], data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as e:
            if e.code == 403:
                say("the hub refused the bootstrap secret (spent or expired); not starting dockerd")
                sys.exit(3)
            say("the hub answered %s; retrying" % e.code)
        except (urllib.error.URLError, OSError) as e:
            say("cannot reach the hub yet (%s); retrying" % e)
        if time.time() > deadline:
            say("gave up redeeming the bootstrap secret")
            sys.exit(4)
        time.sleep(0.5)


def write(path, text, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def docker_ok(*args):
    return subprocess.run([DOCKER] + list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def main():
    with open(CONFIG) as f:
        cfg = json.load(f)
    payload = redeem(cfg)
    cfg["secret"] = ""  # spent; nothing worth keeping
    write(CONFIG, json.dumps(cfg), 0o600)
    tls = payload["docker_tls"]
    os.makedirs(TLS_DIR, mode=0o700, exist_ok=True)
    write(TLS_DIR + "/ca.pem", tls["ca"], 0o644)
    write(TLS_DIR + "/cert.pem", tls["cert"], 0o644)
    write(TLS_DIR + "/key.pem", tls["key"], 0o600)
    address, port = payload["address"], int(payload["docker_port"])
    argv = ["dockerd", "-H", "unix:///var/run/docker.sock", "-H", "tcp://%s:%d" % (address, port), "--tlsverify",
            "--tlscacert=" + TLS_DIR + "/ca.pem", "--tlscert=" + TLS_DIR + "/cert.pem",
            "--tlskey=" + TLS_DIR + "/key.pem"]
    log = open("/var/log/dockerd.log", "ab")
    subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    say("dockerd starting on %s:%d (mutual TLS)" % (address, port))
    for _ in range(300):
        if docker_ok("info"):
            break
        time.sleep(0.2)
    else:
        say("dockerd did not start; see /var/log/dockerd.log")
        sys.exit(5)
    image, tar = payload.get("image"), payload.get("image_tar")
    if image and tar and not docker_ok("image", "inspect", image):
        say("importing %s from %s" % (image, tar))
        if not docker_ok("import", tar, image):
            say("could not import %s" % tar)
            sys.exit(6)
    say("ready")


if __name__ == "__main__":
    main()
