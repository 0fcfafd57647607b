"""Apply an authentication method: generate, validate, back up, switch the fragment atomically, restart."""
import asyncio
import datetime
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

from ..environments.validation import ValidationError
from ..environments.manager import Conflict
from . import methods, settings


def write_atomic(path, text, mode=0o600):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def systemd_booted():
    """systemd is PID 1 (sd_booted()) and systemd-run is there."""
    return os.path.isdir("/run/systemd/system") and shutil.which("systemd-run") is not None


def systemd_run_command(unit, helper, log_path):
    """``systemd-run`` starting ``helper`` as a transient service of its own: outside the hub's unit, so
    ``systemctl restart`` of the hub does not kill it; --collect removes the unit even if it fails."""
    cmd = ["systemd-run", f"--unit={unit}", "--collect", "--quiet", "--service-type=exec",
           f"--property=StandardOutput=append:{log_path}", f"--property=StandardError=append:{log_path}",
           f"--working-directory={os.path.dirname(log_path)}"]
    if os.geteuid() != 0:
        cmd.insert(1, "--user")  # the user's manager: the system one needs root
    # a transient unit does not inherit our environment; the helper needs no secret from it (and --setenv
    # values are shown by `systemctl show`): only where to find the restart command and the package
    for name in ("PATH", "PYTHONPATH"):
        if os.environ.get(name):
            cmd.append(f"--setenv={name}={os.environ[name]}")
    return cmd + list(helper)


class MethodApplier:
    def __init__(self, fragment_path, restart_command, check_url, db_url, timeout=120, keep_backups=10,
                 python=sys.executable, log=None, login_url="", helper_cgroup=""):
        self.fragment_path = fragment_path
        self.restart_command = list(restart_command)
        self.check_url = check_url
        self.db_url = db_url
        self.timeout = timeout
        self.keep_backups = keep_backups
        self.python = python
        self.log = log
        self.login_url = login_url
        self.helper_cgroup = helper_cgroup

    @property
    def can_restart(self):
        return bool(self.restart_command)

    async def validate(self, path, kind):
        proc = await asyncio.create_subprocess_exec(
            self.python, "-m", "jhub_broker.services.authadmin.validate", path, *methods.required_traits(kind),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        try:
            return json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"ok": False, "errors": ["the validator failed: " + err.decode("utf-8", "replace")[-300:]]}

    def backup(self):
        if not os.path.exists(self.fragment_path):
            return None
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S%f")
        path = f"{self.fragment_path}.bak-{stamp}"
        with open(self.fragment_path) as src:
            write_atomic(path, src.read())
        for old in sorted(glob.glob(self.fragment_path + ".bak-*"))[:-self.keep_backups]:
            os.unlink(old)
        return path

    async def apply(self, db, record, user):
        """Validate and switch to ``record``; start the restart helper. Returns the restart status."""
        status = settings.get(db, "restart_status", {}) or {}
        if status.get("state") in ("restarting", "rolling-back") and not self._stale(status):
            raise Conflict("A restart is already in progress.")
        text = methods.render_fragment(record, user)
        d = os.path.dirname(os.path.abspath(self.fragment_path))
        os.makedirs(d, exist_ok=True)
        fd, candidate = tempfile.mkstemp(dir=d, prefix=".candidate-", suffix=".py")
        os.close(fd)
        try:
            write_atomic(candidate, text)
            result = await self.validate(candidate, record["kind"])
            if not result.get("ok"):
                errors = self._scrub("; ".join(result.get("errors", [])), record)
                settings.audit(db, user, "auth:method", f"refused {record['kind']}: {errors}", result="failed")
                db.commit()
                raise ValidationError(f"The new configuration does not validate, nothing was changed: {errors}")
            previous = settings.get(db, "method", None)
            backup = self.backup()
            os.replace(candidate, self.fragment_path)
        finally:
            if os.path.exists(candidate):
                os.unlink(candidate)
        settings.put(db, "method", record, user)
        changed = sorted(set(record["settings"]) | set(record["secrets"]))
        settings.audit(db, user, "auth:method", f"switch to {record['kind']} (settings: {', '.join(changed)}); "
                                                f"backup {os.path.basename(backup) if backup else 'none'}")
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None).isoformat() + "Z"
        if not self.can_restart:
            status = {"state": "pending-restart", "kind": record["kind"], "by": user, "started": now,
                      "message": "The configuration is written and validated; restart the hub to switch."}
            settings.put(db, "restart_status", status, user)
            db.commit()
            return status
        status = {"state": "restarting", "kind": record["kind"], "by": user, "started": now,
                  "message": "restart requested"}
        settings.put(db, "restart_status", status, user)
        db.commit()
        job = {"command": self.restart_command, "check_url": self.check_url, "timeout": self.timeout,
               "fragment": self.fragment_path, "backup": backup, "previous_method": previous,
               "db_url": self.db_url, "user": user, "kind": record["kind"], "started": now,
               "login_url": self.login_url, "login": methods.login_expectation(record)}
        await asyncio.to_thread(self._start_helper, job)  # systemd-run may take a moment
        return status

    def _start_helper(self, job):
        """Start the restart helper where a restart of the hub cannot kill it (see traits.restart_helper_cgroup).

        The job file sits next to the fragment, not in /tmp: a hub unit with PrivateTmp= would hide it from a
        helper started by systemd."""
        d = os.path.dirname(os.path.abspath(self.fragment_path))
        fd, path = tempfile.mkstemp(dir=d, prefix=".restart-job-", suffix=".json")  # 0600
        job = dict(job, cgroup=self.helper_cgroup or "")
        with os.fdopen(fd, "w") as f:
            json.dump(job, f)
        log_path = self.fragment_path + ".restart.log"
        os.close(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(log_path, 0o600)  # the restart command's output may say more than pages do
        helper = [self.python, "-m", "jhub_broker.services.authadmin.restart", path]
        if not self.helper_cgroup and systemd_booted():
            unit = "jhub-broker-restart-" + job["started"].replace(":", "").replace(".", "").replace("-", "")[:24]
            cmd = systemd_run_command(unit, helper, log_path)
            try:
                p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
                if p.returncode == 0:
                    self._say("restart helper started as systemd unit %s", unit)
                    return
                why = p.stderr.decode("utf-8", "replace").strip()[-300:]
            except (OSError, subprocess.TimeoutExpired) as e:
                why = str(e)
            self._say("systemd-run failed (%s): the restart helper runs in a session of its own, and a restart "
                      "that kills the hub's whole cgroup will kill it too", why, warn=True)
        with open(log_path, "ab") as out:
            # its own session: a hub stop that signals the service's process group spares it; the hub's cgroup
            # is left by the helper itself when a cgroup is configured
            subprocess.Popen(helper, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                             close_fds=True)

    def _say(self, msg, *args, warn=False):
        if self.log:
            (self.log.warning if warn else self.log.info)(msg, *args)

    def _stale(self, status):
        """A restart status left behind by a helper that died (3 restart timeouts old)."""
        try:
            started = datetime.datetime.fromisoformat(status.get("started", "").rstrip("Z"))
        except ValueError:
            return True
        return (datetime.datetime.utcnow() - started).total_seconds() > 3 * self.timeout + 60

    @staticmethod
    def _scrub(text, record):
        for secret in methods.plain_secrets(record):
            if secret:
                text = text.replace(secret, "••••")
        return text
