"""The environments manager: declared state in the db, builds on disk, kernels, drift, history.

On-disk layout under ``root``::

    <name>/builds/<n>/      one virtualenv per build (never changed after it passes)
    <name>/logs/<n>.log     build logs
    <name>/current          symlink -> builds/<n> of the published build (kernels point here)
    .cache/                 installer cache (uv), so rebuilds from lockfiles are fast
    .trash/                 adopted or discarded hand-made dirs before removal

All db access happens on the event loop thread; builds run as asyncio subprocesses.
"""
import asyncio
import logging
import os
import shutil
import time

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from sqlalchemy import select

from ..db import Action, Build, Environment, env_by_name, utcnow
from . import builder, kernels
from .validation import (ValidationError, normalize_requirements, parse_lockfile, parse_requirement, shown,
                         validate_display_name, validate_env_name)

log = logging.getLogger("jhub_broker.services")

ACTIVE = ("queued", "building", "testing")


class Conflict(Exception):
    """The request clashes with the current state (e.g. a build is running)."""


class NotFound(Exception):
    pass


class EnvironmentManager:
    def __init__(self, session_factory, root, kernels_dir, pythons, installer="auto", keep_builds=3,
                 max_parallel_builds=1, smoke_user=None, build_user=None, build_env_allow=builder.BUILD_ENV_ALLOW):
        self.Session = session_factory
        self.db = session_factory()
        self.root = os.path.abspath(root)
        self.kernels_dir = os.path.abspath(kernels_dir)
        self.pythons = dict(pythons)
        self.installer = builder.choose_installer(installer)
        self.keep_builds = keep_builds
        self.smoke_user = smoke_user
        self.build_user = build_user
        self.build_env_allow = tuple(build_env_allow)
        self.cache_dir = os.path.join(self.root, ".cache")
        self._build_slots = asyncio.Semaphore(max_parallel_builds)
        self._env_locks = {}
        self.tasks = set()
        for d in (self.root, self.cache_dir, os.path.join(self.root, ".trash")):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.cache_dir, 0o700)
        switch = builder.as_user(build_user)
        if switch:  # the installer's cache is the build user's (its only writable place besides its build dir)
            builder.chown_tree(self.cache_dir, switch["user"], switch["group"])

    # ---- paths -------------------------------------------------------------------------------
    def env_dir(self, name):
        return os.path.join(self.root, validate_env_name(name))

    def build_dir(self, name, number):
        return os.path.join(self.env_dir(name), "builds", str(number))

    def log_path(self, name, number):
        return os.path.join(self.env_dir(name), "logs", f"{number}.log")

    def current_link(self, name):
        return os.path.join(self.env_dir(name), "current")

    def kernel_python(self, name):
        return os.path.join(self.current_link(name), "bin", "python")

    # ---- queries ------------------------------------------------------------------------------
    def get_env(self, name):
        env = env_by_name(self.db, validate_env_name(name))
        if env is None:
            raise NotFound(f"No environment named {name!r}.")
        return env

    def list_envs(self):
        return list(self.db.scalars(select(Environment).order_by(Environment.name)))

    def get_build(self, env, number):
        for b in env.builds:
            if b.number == number:
                return b
        raise NotFound(f"Environment {env.name!r} has no build {number}.")

    def current_build(self, env):
        for b in env.builds:
            if b.id == env.current_build_id:
                return b
        return None

    def history(self, limit=200, target=None, audit=False):
        """Actions, newest first. The authentication audit log (target ``@auth``) only with ``audit=True``."""
        q = select(Action).order_by(Action.id.desc()).limit(limit)
        if (target == "@auth") != bool(audit):
            return []
        if target:
            q = q.where(Action.target == target)
        else:  # the authentication audit log is for hub admins only (see authadmin)
            q = q.where(Action.target != "@auth")
        return list(self.db.scalars(q))

    def read_log(self, name, number, offset=0):
        try:
            with open(self.log_path(name, number), "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    def _pending_requirements(self, env):
        """What a new change builds on: the newest queued/running build's requirements, else the env's."""
        for b in reversed(env.builds):
            if b.status in ACTIVE:
                return b.requirements
        return env.requirements

    # ---- actions ------------------------------------------------------------------------------
    def _action(self, user, action, target, detail="", result="running", build=None):
        a = Action(user=user, action=action, target=target, detail=detail[:4000], result=result,
                   build_id=build.id if build else None)
        if result != "running":
            a.finished = utcnow()
        self.db.add(a)
        self.db.commit()
        return a

    def create(self, user, name, python=None, requirements=(), display_name=None):
        name = validate_env_name(name)
        if env_by_name(self.db, name) is not None:
            raise Conflict(f"An environment named {name!r} already exists.")
        if os.path.exists(self.env_dir(name)):
            raise Conflict(f"A directory named {name!r} already exists under the environments root; "
                           "adopt or discard it first.")
        python = python or next(iter(self.pythons))
        if not isinstance(python, str) or python not in self.pythons:
            raise ValidationError(f"python {shown(python, 20)} is not available; choose one of "
                                  f"{sorted(self.pythons)}.")
        reqs = normalize_requirements(requirements)
        display_name = validate_display_name(display_name, f"Python {python} ({name})")
        env = Environment(name=name, display_name=display_name, python=python)
        env.requirements = reqs
        self.db.add(env)
        self.db.commit()
        return self._start_build(env, user, "create", reqs, detail="requirements: " + ", ".join(reqs))

    def change_packages(self, user, name, add=(), remove=(), upgrade=()):
        env = self.get_env(name)
        reqs = {canonicalize_name(Requirement(s).name): s for s in self._pending_requirements(env)}
        added = normalize_requirements(list(add))
        removed, upgraded = [], []
        for n in remove:
            key = canonicalize_name(parse_requirement(n).name)
            if key not in reqs:
                raise ValidationError(f"Package {n!r} is not in environment {name!r}.")
            removed.append(key)
            del reqs[key]
        for s in added:
            reqs[canonicalize_name(Requirement(s).name)] = s
        for n in upgrade:
            key = canonicalize_name(parse_requirement(n).name)
            if key not in reqs:
                raise ValidationError(f"Package {n!r} is not in environment {name!r}.")
            upgraded.append(key)
        if not (added or removed or upgraded):
            raise ValidationError("Nothing to change: give packages to add, remove or upgrade.")
        new = sorted(reqs.values(), key=lambda s: canonicalize_name(Requirement(s).name))
        detail = "; ".join(p for p in (
            "add " + ", ".join(added) if added else "", "remove " + ", ".join(removed) if removed else "",
            "upgrade " + ", ".join(upgraded) if upgraded else "") if p)
        return self._start_build(env, user, "packages", new, detail=detail, upgrade=upgraded)

    def upload_requirements(self, user, name, text, mode="merge"):
        env = self.get_env(name)
        specs = normalize_requirements(text)
        if mode == "replace":
            new = specs
        elif mode == "merge":
            reqs = {canonicalize_name(Requirement(s).name): s for s in self._pending_requirements(env)}
            for s in specs:
                reqs[canonicalize_name(Requirement(s).name)] = s
            new = sorted(reqs.values(), key=lambda s: canonicalize_name(Requirement(s).name))
        else:
            raise ValidationError("mode must be 'merge' or 'replace'.")
        return self._start_build(env, user, "upload", new, detail=f"{mode}: " + ", ".join(specs))

    def set_display_name(self, user, name, display_name):
        env = self.get_env(name)
        env.display_name = validate_display_name(display_name, env.display_name)
        self.db.commit()
        if self.current_build(env):
            kernels.write_kernelspec(self.kernels_dir, env.name, env.display_name, self.kernel_python(env.name))
        self._action(user, "rename", env.name, detail=env.display_name, result="ok")
        return env

    def rollback(self, user, name, number=None):
        """Publish an earlier build (default: the newest passed build before the current one)."""
        env = self.get_env(name)
        if any(b.status in ACTIVE for b in env.builds):
            raise Conflict("A build is running for this environment; wait for it to finish.")
        cur = self.current_build(env)
        if number is None:
            older = [b for b in env.builds if b.status in ("ready", "retired") and cur and b.number < cur.number]
            if not older:
                raise Conflict("There is no earlier build to roll back to.")
            target = older[-1]
        else:
            target = self.get_build(env, int(number))
        if target.status == "ready" and os.path.isdir(self.build_dir(name, target.number)):
            self._publish(env, target)
            self._action(user, "rollback", env.name, detail=f"build {cur.number if cur else '-'} -> {target.number}",
                         result="ok", build=target)
            return target
        if target.status == "retired" and target.lockfile:
            # its directory was removed by retention: rebuild it exactly from its lockfile
            return self._start_build(env, user, "rollback", target.requirements, lockfile=target.lockfile,
                                     detail=f"rebuild build {target.number} from its lockfile")
        raise Conflict(f"Build {target.number} cannot be restored (status {target.status}).")

    def delete(self, user, name):
        env = self.get_env(name)
        if any(b.status in ACTIVE for b in env.builds):
            raise Conflict("A build is running for this environment; wait for it to finish.")
        kernels.remove_kernelspec(self.kernels_dir, env.name)
        self._trash(self.env_dir(env.name))
        self.db.delete(env)
        self.db.commit()
        self._action(user, "delete", name, result="ok")

    # ---- drift ---------------------------------------------------------------------------------
    async def drift(self, name):
        """Packages in the published env that differ from its lockfile (hand installs/removals)."""
        env = self.get_env(name)
        cur = self.current_build(env)
        if cur is None or not os.path.isdir(self.build_dir(name, cur.number)):
            return {"extra": {}, "missing": {}, "changed": {}}
        locked = parse_lockfile(cur.lockfile)
        installed = {canonicalize_name(n): v for n, v in
                     (await builder.freeze(self.build_dir(name, cur.number))).items()
                     if canonicalize_name(n) not in builder.TOOLING}
        return {
            "extra": {n: v for n, v in installed.items() if n not in locked},
            "missing": {n: v for n, v in locked.items() if n not in installed},
            "changed": {n: {"locked": locked[n], "installed": v} for n, v in installed.items()
                        if n in locked and locked[n] != v},
        }

    async def resolve_drift(self, user, name, action):
        env = self.get_env(name)
        d = await self.drift(name)
        if not any(d.values()):
            raise Conflict("The environment has no drift.")
        cur = self.current_build(env)
        if action == "adopt":
            reqs = {canonicalize_name(Requirement(s).name): s for s in env.requirements}
            for n, v in d["extra"].items():
                reqs[n] = f"{n}=={v}"
            for n, v in d["changed"].items():
                reqs[n] = f"{n}=={v['installed']}"
            new = sorted(reqs.values(), key=lambda s: canonicalize_name(Requirement(s).name))
            return self._start_build(env, user, "adopt-drift", new, detail=_drift_text(d))
        if action == "discard":
            return self._start_build(env, user, "discard-drift", env.requirements, lockfile=cur.lockfile,
                                     detail=_drift_text(d))
        raise ValidationError("action must be 'adopt' or 'discard'.")

    def unmanaged(self):
        """Directories under the root that the service did not create (hand-made environments)."""
        known = {e.name for e in self.list_envs()}
        out = []
        for entry in sorted(os.listdir(self.root)):
            p = os.path.join(self.root, entry)
            if entry.startswith(".") or entry in known or not os.path.isdir(p) or os.path.islink(p):
                continue
            out.append({"name": entry, "is_venv": os.path.exists(os.path.join(p, "pyvenv.cfg")),
                        "valid_name": _valid(entry), "size_bytes": builder.dir_size(p)})
        return out

    async def resolve_unmanaged(self, user, dirname, action, display_name=None):
        entry = next((u for u in self.unmanaged() if u["name"] == dirname), None)
        if entry is None:
            raise NotFound(f"No unmanaged directory named {shown(dirname)}.")
        p = os.path.join(self.root, entry["name"])
        if action == "discard":
            self._trash(p)
            self._action(user, "discard-unmanaged", dirname, result="ok")
            return None
        if action != "adopt":
            raise ValidationError("action must be 'adopt' or 'discard'.")
        if not entry["is_venv"]:
            raise ValidationError(f"{shown(dirname)} is not a virtual environment (no pyvenv.cfg); it can only be discarded.")
        validate_env_name(dirname)
        pins = await builder.freeze(p)
        reqs = [f"{canonicalize_name(n)}=={v}" for n, v in pins.items()
                if canonicalize_name(n) not in builder.TOOLING]
        self._trash(p)
        return self.create(user, dirname, requirements=reqs, display_name=display_name)

    # ---- usage --------------------------------------------------------------------------------
    def usage(self):
        envs = []
        for env in self.list_envs():
            builds = [{"number": b.number, "status": b.status, "current": b.id == env.current_build_id,
                       "size_bytes": b.size_bytes} for b in env.builds]
            envs.append({"name": env.name, "builds": builds, "size_bytes": sum(b["size_bytes"] for b in builds)})
        return {"environments": envs, "cache_bytes": builder.dir_size(self.cache_dir),
                "total_bytes": builder.dir_size(self.root), "keep_builds": self.keep_builds}

    # ---- builds -------------------------------------------------------------------------------
    def _start_build(self, env, user, action, requirements, lockfile=None, detail="", upgrade=()):
        number = max([b.number for b in env.builds] or [0]) + 1
        b = Build(environment=env, number=number, status="queued", reason=action, created_by=user,
                  requirements_json=_json(requirements), installer=self.installer)
        self.db.add(b)
        self.db.commit()
        a = self._action(user, action, env.name, detail=detail, build=b)
        task = asyncio.ensure_future(self._run_build(env.id, b.id, a.id, lockfile, upgrade))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return b

    async def _run_build(self, env_id, build_id, action_id, lockfile, upgrade):
        env = self.db.get(Environment, env_id)
        b = self.db.get(Build, build_id)
        a = self.db.get(Action, action_id)
        name = env.name
        os.makedirs(os.path.dirname(self.log_path(name, b.number)), exist_ok=True)
        os.makedirs(os.path.dirname(self.build_dir(name, b.number)), exist_ok=True)
        os.chmod(self.env_dir(name), 0o755)
        os.chmod(os.path.dirname(self.build_dir(name, b.number)), 0o755)
        logf = open(self.log_path(name, b.number), "a", buffering=1)

        def emit(line):
            for part in str(line).split("\n"):
                logf.write(f"[{time.strftime('%H:%M:%S')}] {part}\n")

        lock = self._env_locks.setdefault(name, asyncio.Lock())
        try:
            emit(f"build {b.number} of {name} queued ({b.reason}) by {b.created_by}")
            async with lock, self._build_slots:
                b.status = "building"
                self.db.commit()
                dest = self.build_dir(name, b.number)
                t0 = time.monotonic()
                lock_text = await builder.build_env(
                    dest, self.pythons[env.python], emit, requirements=b.requirements, lockfile=lockfile,
                    installer=self.installer, cache_dir=self.cache_dir, upgrade=upgrade,
                    smoke_packages=[Requirement(s).name for s in b.requirements], smoke_user=self.smoke_user,
                    build_user=self.build_user, env_allow=self.build_env_allow)
                b.lockfile = lock_text
                b.size_bytes = builder.dir_size(dest)
                self._publish(env, b)
                emit(f"== published build {b.number} in {time.monotonic() - t0:.1f} s")
                a.result = "ok"
                self._retain(env)
        except Exception as e:  # the build failed: keep the log, remove the half-built dir
            log.exception("build %s/%s failed", name, b.number)
            emit(f"== build failed: {e}")
            b.status = "failed"
            a.result = "failed"
            shutil.rmtree(self.build_dir(name, b.number), ignore_errors=True)
        finally:
            b.finished = a.finished = utcnow()
            self.db.commit()
            emit(f"== status: {b.status}")
            logf.close()

    def _publish(self, env, b):
        link = self.current_link(env.name)
        tmp = link + ".new"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.path.join("builds", str(b.number)), tmp)
        os.replace(tmp, link)
        b.status = "ready"
        env.current_build_id = b.id
        env.requirements = b.requirements
        self.db.commit()
        kernels.write_kernelspec(self.kernels_dir, env.name, env.display_name, self.kernel_python(env.name))

    def _retain(self, env):
        """Keep the current build and the newest ``keep_builds`` other passed builds on disk."""
        others = [b for b in env.builds if b.status == "ready" and b.id != env.current_build_id]
        for b in others[:max(0, len(others) - self.keep_builds)]:
            shutil.rmtree(self.build_dir(env.name, b.number), ignore_errors=True)
            b.status = "retired"
            b.size_bytes = 0
        self.db.commit()

    def _trash(self, path):
        dest = os.path.join(self.root, ".trash", f"{os.path.basename(path)}-{time.time_ns()}")
        if os.path.lexists(path):
            os.replace(path, dest)
            shutil.rmtree(dest, ignore_errors=True)

    async def wait_idle(self):
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


def _json(value):
    import json
    return json.dumps(list(value))


def _valid(name):
    try:
        validate_env_name(name)
        return True
    except ValidationError:
        return False


def _drift_text(d):
    parts = [f"+{n}=={v}" for n, v in d["extra"].items()]
    parts += [f"-{n}=={v}" for n, v in d["missing"].items()]
    parts += [f"~{n} {v['locked']}->{v['installed']}" for n, v in d["changed"].items()]
    return " ".join(parts)
