"""The restart helper: runs detached from the hub (the hub's restart also stops this service).

``python -m jhub_broker.services.authadmin.restart JOB.json`` runs the restart command, waits for the hub API to
answer, and if it does not, puts the previous config fragment back, restarts again and waits again. Progress and
the outcome go to the service's database (``restart_status`` setting and the audit log) and to stderr.
"""
import json
import os
import shutil
import subprocess
import sys
import time
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


def run_restart(cmd, timeout):
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace")[-1000:]
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, str(e)


def log(msg):
    print(time.strftime("%H:%M:%S"), "restart helper:", msg, file=sys.stderr, flush=True)


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

    status("restarting", f"restarting the hub with {job['kind']}")
    code, out = run_restart(job["command"], job["timeout"])
    if code == 0 and hub_up(job["check_url"], job["timeout"]):
        status("ok", f"the hub is back with {job['kind']}")
        settings.audit(db, job["user"], "auth:restart", f"hub restarted with method {job['kind']}")
        db.commit()
        return 0
    why = f"restart command exited {code}" if code else "the hub did not come back"
    log(f"{why}; output: {out.strip()[-500:]}")
    # roll back: the previous fragment (or none) and the previous method record
    if job.get("backup"):
        shutil.copy2(job["backup"], job["fragment"] + ".rollback")
        os.replace(job["fragment"] + ".rollback", job["fragment"])
    elif os.path.exists(job["fragment"]):
        os.unlink(job["fragment"])
    settings.put(db, "method", job.get("previous_method"), job["user"])
    db.commit()
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
