"""Apply an authentication method: generate, validate, back up, switch the fragment atomically, restart."""
import asyncio
import datetime
import glob
import json
import os
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


class MethodApplier:
    def __init__(self, fragment_path, restart_command, check_url, db_url, timeout=120, keep_backups=10,
                 python=sys.executable, log=None):
        self.fragment_path = fragment_path
        self.restart_command = list(restart_command)
        self.check_url = check_url
        self.db_url = db_url
        self.timeout = timeout
        self.keep_backups = keep_backups
        self.python = python
        self.log = log

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
        self._start_helper({"command": self.restart_command, "check_url": self.check_url, "timeout": self.timeout,
                            "fragment": self.fragment_path, "backup": backup, "previous_method": previous,
                            "db_url": self.db_url, "user": user, "kind": record["kind"], "started": now})
        return status

    def _start_helper(self, job):
        fd, path = tempfile.mkstemp(prefix="jhub-broker-restart-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(job, f)
        log_path = self.fragment_path + ".restart.log"
        with open(log_path, "ab") as out:
            # its own session: the hub's restart stops this service, not the helper
            subprocess.Popen([self.python, "-m", "jhub_broker.services.authadmin.restart", path],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                             close_fds=True)

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
