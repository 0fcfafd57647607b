"""Build one Python environment: virtualenv creates it, uv (or pip) fills it, a kernel smoke test checks it.

The same code builds environments in the service and on users' VMs (see ``sync``).
Every function reports progress through ``log(line)``.
"""
import asyncio
import os
import shutil
import stat
import sys

from .validation import parse_lockfile

# Always present in a shared environment: it is what makes the env a kernel.
KERNEL_PACKAGE = "ipykernel"
# Not part of a lockfile: installer tooling, not the user's software.
TOOLING = {"pip", "setuptools", "wheel", "uv", "distribute"}


class BuildError(RuntimeError):
    pass


def find_uv():
    """Path of the uv binary, or None."""
    try:
        from uv import find_uv_bin
        return find_uv_bin()
    except Exception:
        return shutil.which("uv")


def choose_installer(preferred="auto"):
    """``uv`` when available (measured 10x+ faster, see benchmarks/env_rebuild.py), else ``pip``."""
    if preferred in ("auto", "uv") and find_uv():
        return "uv"
    if preferred == "uv":
        raise BuildError("installer 'uv' requested but uv is not installed")
    return "pip"


def python_version(path):
    """``'3.11'`` for the interpreter at ``path``, or None."""
    import subprocess
    out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() if out.returncode == 0 else None


def env_python(env_dir):
    return os.path.join(env_dir, "bin", "python")


def as_user(user):
    """subprocess keyword arguments running a child as ``user`` (name) when we are root; {} otherwise."""
    if not user or os.geteuid() != 0:
        return {}
    import pwd
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def chown_tree(path, uid, gid):
    """``chown -R`` without following symlinks (a build may leave links pointing anywhere)."""
    os.lchown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                os.lchown(os.path.join(root, name), uid, gid)
            except FileNotFoundError:
                continue


def others_can_traverse(path):
    """Whether every directory down to ``path`` lets other users through (o+x)."""
    path = os.path.abspath(path)
    while True:
        try:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        parent = os.path.dirname(path)
        if parent == path:
            return True
        path = parent


async def run(cmd, log, env=None, cwd=None, user=None):
    """Run ``cmd`` (as ``user`` when given and root), stream its output to ``log``; raise :class:`BuildError`
    on failure."""
    log("$ " + " ".join(cmd) + (f"  (as {user})" if as_user(user) else ""))
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL, **as_user(user))
    async for raw in proc.stdout:
        log(raw.decode("utf-8", "replace").rstrip("\n"))
    rc = await proc.wait()
    if rc != 0:
        raise BuildError(f"{os.path.basename(cmd[0])} exited with status {rc}")


# What builds may see of the service's environment by default: proxies, the package index and TLS settings.
# A name ending in "*" is a prefix.
BUILD_ENV_ALLOW = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
                   "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_*",
                   "UV_*")
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def secret_name(name):
    """Whether an environment variable's name says it holds a secret (never given to a build)."""
    upper = name.upper()
    return any(w in upper for w in ("TOKEN", "SECRET", "PASSWORD", "CRYPT_KEY")) or upper.startswith("JUPYTERHUB_")


def _allowed(name, allow):
    return any(name.startswith(a[:-1]) if a.endswith("*") else name == a for a in allow)


def build_environ(allow=BUILD_ENV_ALLOW, home="/tmp", cache_dir=None, source=None):
    """The whole environment of a build's processes (installer, package build backends, smoke test).

    Package build backends run arbitrary code from the index: they get PATH, HOME, LANG and the variables the
    operator allows (``allow``), never a name that looks like a secret (the service's hub token, the crypt key).
    """
    source = os.environ if source is None else source
    env = {"PATH": source.get("PATH") or SAFE_PATH, "HOME": home, "LANG": source.get("LANG") or "C.UTF-8"}
    env.update({k: v for k, v in source.items() if _allowed(k, allow) and not secret_name(k)})
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["UV_NO_PROGRESS"] = "1"
    if cache_dir:
        env["UV_CACHE_DIR"] = cache_dir
        env["PIP_CACHE_DIR"] = os.path.join(cache_dir, "pip")
    return env


async def create_venv(dest, base_python, log, seed_pip=False):
    """Create the env with virtualenv, in-process (its interpreter discovery is cached: ~10 ms warm)."""
    from virtualenv import cli_run
    args = ["--quiet", "--no-periodic-update", "--python", base_python, dest]
    if not seed_pip:
        args.insert(0, "--no-seed")
    log("$ virtualenv " + " ".join(args))
    try:
        session = await asyncio.to_thread(cli_run, args, setup_logging=False)
    except (Exception, SystemExit) as e:
        raise BuildError(f"virtualenv failed: {e}") from None
    log(f"created virtual environment {session.creator.interpreter.spec} in {dest}")


async def install(dest, req_file, log, installer="uv", cache_dir=None, no_deps=False, upgrade=(), user=None,
                  env_allow=BUILD_ENV_ALLOW, home="/tmp"):
    """Install the requirements in ``req_file`` into the env at ``dest`` (as ``user`` when given and root)."""
    py = env_python(dest)
    env = build_environ(env_allow, home=home, cache_dir=cache_dir)
    if installer == "uv":
        cmd = [find_uv(), "pip", "install", "--python", py, "-r", req_file]
        if cache_dir:
            cmd += ["--cache-dir", cache_dir]
    else:
        cmd = [py, "-m", "pip", "install", "--no-input", "-r", req_file]
        if cache_dir:
            cmd += ["--cache-dir", os.path.join(cache_dir, "pip")]
    if no_deps:
        cmd.append("--no-deps")
    for name in upgrade:  # fetch fresh index data for these, so the newest allowed version is chosen
        cmd += ["--refresh-package", name] if installer == "uv" else ["--upgrade-strategy", "eager", "--upgrade"]
        if installer != "uv":
            break
    await run(cmd, log, env=env, cwd=dest, user=user)  # cwd: nothing relative can point at service files


def _freeze_files(dest):
    import glob
    import importlib.metadata as md
    paths = sorted(glob.glob(os.path.join(dest, "lib*", "python*", "site-packages")))
    if not paths:
        raise BuildError(f"could not list packages: {dest} has no site-packages")
    out = {}
    for d in md.distributions(path=paths):
        name = d.metadata["Name"] if d.metadata else None
        if name and name not in out:
            out[name] = d.version
    return out


async def freeze(dest):
    """Exact versions of every distribution installed in the env: {name: version}.

    Read from the installed metadata, without starting the env's Python: a package's .pth file would run its code
    in the service (as root)."""
    return await asyncio.to_thread(_freeze_files, dest)


def lock_text(pins):
    """The lockfile: ``name==version`` per line, sorted, tooling left out."""
    from packaging.utils import canonicalize_name
    lines = sorted(f"{canonicalize_name(n)}=={v}" for n, v in pins.items() if canonicalize_name(n) not in TOOLING)
    return "\n".join(lines) + "\n"


def make_readonly_for_others(path):
    """Files readable (and dirs/executables traversable) by everyone, writable only by the owner."""
    for root, dirs, files in os.walk(path):
        for name in dirs + files + [""]:
            p = os.path.join(root, name) if name else root
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            mode = stat.S_IMODE(st.st_mode)
            new = (mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH) & ~(stat.S_IWGRP | stat.S_IWOTH)
            if stat.S_ISDIR(st.st_mode) or mode & stat.S_IXUSR:
                new |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
            if new != mode:
                os.chmod(p, new)


def dir_size(path):
    total = 0
    seen = set()
    for root, dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


async def smoke_test(dest, package_names, log, timeout=120, run_as=None, env_allow=BUILD_ENV_ALLOW):
    """Start the env's kernel and import every package; raise :class:`BuildError` if anything fails.

    Runs with the env's own Python (jupyter_client comes with ipykernel) and, with ``run_as`` (when the
    service is root), as that unprivileged user: so it also proves users can read and run the env.
    """
    from . import smoke
    with open(smoke.__file__) as f:
        source = f.read()
    cmd = [env_python(dest), "-I", "-c", source, "--python", env_python(dest), "--timeout", str(timeout),
           *package_names]
    log(f"$ {env_python(dest)} -m jhub_broker.services.environments.smoke --python {env_python(dest)} "
        + " ".join(package_names) + (f"  (as {run_as})" if run_as else ""))
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                                                env=build_environ(env_allow, home="/tmp"), cwd="/",
                                                **as_user(run_as))
    async for raw in proc.stdout:
        log(raw.decode("utf-8", "replace").rstrip("\n"))
    if await proc.wait() != 0:
        raise BuildError("smoke test failed")


def _requirements_with_kernel(specs):
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    names = {canonicalize_name(Requirement(s).name) for s in specs}
    return list(specs) + ([] if KERNEL_PACKAGE in names else [KERNEL_PACKAGE])


async def build_env(dest, base_python, log, requirements=None, lockfile=None, installer="uv", cache_dir=None,
                    smoke=True, upgrade=(), smoke_packages=None, smoke_user=None, build_user=None,
                    env_allow=BUILD_ENV_ALLOW):
    """Create the env at ``dest`` from ``requirements`` (resolving) or ``lockfile`` (exact, no resolution).

    With ``build_user`` (when root), the installer and every package's build backend run as that user, who owns
    ``dest`` (and ``cache_dir``) only while it is filled; afterwards the tree belongs to us again, so the
    build user cannot change a published environment. Returns the lockfile text of what got installed.
    """
    from packaging.requirements import Requirement
    if os.path.exists(dest):
        raise BuildError(f"{dest} already exists")
    old_umask = os.umask(0o022)
    try:
        log(f"== creating virtualenv with {base_python}")
        await create_venv(dest, base_python, log, seed_pip=(installer == "pip"))
        req_file = os.path.join(dest, "jhub-broker-requirements.txt")
        if lockfile is not None:
            parse_lockfile(lockfile)  # exact pins only
            text, no_deps = lockfile, True
            names = []
        else:
            specs = _requirements_with_kernel(requirements or [])
            text, no_deps = "\n".join(specs) + "\n", False
            names = [Requirement(s).name for s in requirements or []]
        with open(req_file, "w") as f:
            f.write(text)
        log(f"== installing with {installer}")
        switch = as_user(build_user)
        home = "/tmp"
        if switch and not others_can_traverse(os.path.dirname(dest)):
            raise BuildError(f"the build user {build_user} cannot reach {os.path.dirname(dest)}: every directory "
                             "above the environments root must be traversable by others (chmod o+x), or set "
                             "BrokerService.build_user")
        if switch:
            import tempfile
            home = tempfile.mkdtemp(prefix="jhub-broker-build-home-")
            os.chown(home, switch["user"], switch["group"])
            chown_tree(dest, switch["user"], switch["group"])
        try:
            await install(dest, req_file, log, installer=installer, cache_dir=cache_dir, no_deps=no_deps,
                          upgrade=upgrade, user=build_user, env_allow=env_allow, home=home)
        finally:
            if switch:
                chown_tree(dest, os.geteuid(), os.getegid())
                shutil.rmtree(home, ignore_errors=True)
        pins = await freeze(dest)
        lock = lock_text(pins)
        with open(os.path.join(dest, "jhub-broker-lock.txt"), "w") as f:
            f.write(lock)
        make_readonly_for_others(dest)
        log("== lockfile:\n" + lock.rstrip())
        if smoke:
            declared = [n for n in (names if smoke_packages is None else smoke_packages)
                        if n.lower() != KERNEL_PACKAGE]
            log("== smoke test: starting the kernel")
            await smoke_test(dest, declared, log, run_as=smoke_user, env_allow=env_allow)
        return lock
    finally:
        os.umask(old_umask)
