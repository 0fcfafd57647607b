"""The restart helper: runs detached from the hub (the hub's restart also stops this service).

``python -m jhub_broker.services.authadmin.restart JOB.json`` runs the restart command, waits for the hub API to
answer and checks the bootstrap admin could log in with the new method (:func:`login_works`); if not, it puts the
previous config fragment back, restarts again and waits again. Progress and the outcome go to the service's
database (``restart_status`` setting and the audit log) and to stderr.

The hub's restart must not kill the helper: the service starts it as a systemd transient unit, or the helper first
moves itself into the cgroup the job names (``BrokerService.restart_helper_cgroup``), see ``apply._start_helper``.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from ..db import make_session_factory, utcnow
from . import settings


def hub_up(url, timeout):
    """True once ``url`` (the hub API root) answers 200 twice in a row within ``timeout`` seconds."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                streak = streak + 1 if r.status == 200 else 0
        except OSError:
            streak = 0
        if streak >= 2:
            return True
        time.sleep(1)
    return False


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def _get(url):
    """(status, Location, body) of a GET that does not follow redirects."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=15) as r:
            return r.status, r.headers.get("Location", ""), r.read(200_000).decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Location", ""), e.read(2000).decode("utf-8", "replace")


def _origin(url):
    u = urllib.parse.urlsplit(url)
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return u.scheme, (u.hostname or "").lower(), port


def login_works(login_url, expect):
    """(ok, why): whether the hub's login, as a browser meets it, lets the bootstrap admin in with the new method.

    A password method must serve its form (200 with a password field); an OAuth method must lead (directly, with
    auto_login, or through the page's login button) to a redirect to the configured provider carrying the
    configured client id and callback URL. A 500, a redirect loop or a redirect elsewhere fails."""
    hub = _origin(login_url)
    url, seen = login_url, []
    for _ in range(6):
        try:
            code, location, body = _get(url)
        except OSError as e:
            return False, f"{url} did not answer: {e}"
        seen.append(f"{urllib.parse.urlsplit(url).path} {code}")
        if code in (301, 302, 303, 307, 308) and location:
            target = urllib.parse.urljoin(url, location)
            if _origin(target) == hub:
                url = target
                continue
            if not expect.get("oauth"):
                return False, f"the login page redirects to {target.split('?')[0]} instead of serving its form"
            return _check_authorize(target, expect)
        if code != 200:
            return False, f"the login page answers HTTP {code} ({' -> '.join(seen)})"
        if not expect.get("oauth"):
            if re.search(r"""<input[^>]+type=["']?password""", body, re.I):
                return True, "the login form is served"
            return False, "the login page has no password field"
        button = re.search(r"""href=["']([^"']*oauth_login[^"']*)["']""", body)
        if not button:
            return False, "the login page has no link to the OAuth login"
        url = urllib.parse.urljoin(url, button.group(1).replace("&amp;", "&"))
    return False, f"too many redirects on the hub ({' -> '.join(seen)})"


def _check_authorize(target, expect):
    where = target.split("?")[0]
    if _origin(target) != _origin(expect.get("provider", "")):
        return False, f"the login sends users to {where}, not to the configured provider {expect.get('provider')}"
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    if expect.get("client_id") and q.get("client_id") != [expect["client_id"]]:
        return False, f"the login at {where} asks for client {q.get('client_id')}, not {expect['client_id']}"
    if expect.get("redirect_uri") and q.get("redirect_uri") != [expect["redirect_uri"]]:
        return False, f"the login at {where} returns to {q.get('redirect_uri')}, not {expect['redirect_uri']}"
    return True, f"the login sends users to {where} with client {expect.get('client_id')}"


def join_cgroup(path):
    """Move this process into the cgroup v2 directory ``path`` (created if missing), away from the hub's."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
    with open(f"/proc/{os.getpid()}/cgroup") as f:
        mine = [line.split(":", 2)[2].strip() for line in f if line.startswith("0::")]
    if not mine or not os.path.realpath(path).endswith(mine[0]):
        raise OSError(f"still in cgroup {mine[0] if mine else '?'} after writing to {path}/cgroup.procs")


def run_restart(cmd, timeout):
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace")[-1000:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


def log(msg):
    print(time.strftime("%H:%M:%S"), "restart helper:", msg, file=sys.stderr, flush=True)


def restore(db, job):
    """The previous fragment (or none) and the previous method record."""
    if job.get("backup"):
        shutil.copy2(job["backup"], job["fragment"] + ".rollback")
        os.replace(job["fragment"] + ".rollback", job["fragment"])
    elif os.path.exists(job["fragment"]):
        os.unlink(job["fragment"])
    settings.put(db, "method", job.get("previous_method"), job["user"])
    db.commit()


def main(argv=None):
    job_path = (sys.argv[1:] if argv is None else argv)[0]
    with open(job_path) as f:
        job = json.load(f)
    os.unlink(job_path)
    db = make_session_factory(job["db_url"])()

    def status(state, message):
        settings.put(db, "restart_status", {"state": state, "message": message, "by": job["user"],
                                            "kind": job["kind"], "started": job["started"],
                                            "updated": utcnow().isoformat() + "Z"}, job["user"])
        db.commit()
        log(f"{state}: {message}")

    if job.get("cgroup"):
        try:
            join_cgroup(job["cgroup"])
            log(f"moved into cgroup {job['cgroup']}")
        except OSError as e:
            # running the restart from inside the hub's cgroup could kill us half-way: change nothing
            why = f"the restart helper could not leave the hub's cgroup ({e}); nothing was restarted"
            restore(db, job)
            status("failed", f"{why}, the previous configuration is back. Check "
                             "BrokerService.restart_helper_cgroup.")
            settings.audit(db, job["user"], "auth:restart", why, result="failed")
            db.commit()
            return 1
    status("restarting", f"restarting the hub with {job['kind']}")
    code, out = run_restart(job["command"], job["timeout"])
    up = code == 0 and hub_up(job["check_url"], job["timeout"])
    login_ok, login_why = login_works(job["login_url"], job.get("login", {})) if up and job.get("login_url") \
        else (up, "")
    if login_ok:
        status("ok", f"the hub is back with {job['kind']}" + (f": {login_why}" if login_why else ""))
        settings.audit(db, job["user"], "auth:restart", f"hub restarted with method {job['kind']}")
        db.commit()
        return 0
    why = (f"restart command exited {code}" if code else "the hub did not come back") if not up else \
        f"the hub came back, but the bootstrap admin could not log in ({login_why})"
    log(f"{why}; output: {out.strip()[-500:]}")
    restore(db, job)
    status("rolling-back", f"{why} with {job['kind']}; restoring the previous configuration")
    code2, out2 = run_restart(job["command"], job["timeout"])
    back = code2 == 0 and hub_up(job["check_url"], job["timeout"])
    state = "rolled-back" if back else "failed"
    msg = (f"{why} with {job['kind']}; the previous configuration was restored and the hub is back"
           if back else f"{why}, and the hub did not come back after the rollback either: check the hub's log")
    status(state, msg)
    settings.audit(db, job["user"], "auth:restart", msg, result="failed")
    db.commit()
    return 1


if __name__ == "__main__":
    sys.exit(main())
