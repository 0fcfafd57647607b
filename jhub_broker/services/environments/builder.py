"""Build one Python environment: virtualenv creates it, uv (or pip) fills it, a kernel smoke test checks it.

The same code builds environments in the service and on users' VMs (see ``sync``).
Every function reports progress through ``log(line)``.
"""
import asyncio
import json
import os
import shutil
import stat
import sys

from .validation import parse_lockfile

# Always present in a shared environment: it is what makes the env a kernel.
KERNEL_PACKAGE = "ipykernel"
# Not part of a lockfile: installer tooling, not the user's software.
TOOLING = {"pip", "setuptools", "wheel", "uv", "distribute"}

FREEZE_SCRIPT = (
    "import importlib.metadata as m, json, sys\n"
    "out = {}\n"
    "for d in m.distributions():\n"
    "    n = d.metadata['Name']\n"
    "    if n: out[n] = d.version\n"
    "json.dump(out, sys.stdout)\n"
)


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


async def run(cmd, log, env=None, cwd=None):
    """Run ``cmd``, stream its output to ``log``; raise :class:`BuildError` on failure."""
    log("$ " + " ".join(cmd))
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL)
    async for raw in proc.stdout:
        log(raw.decode("utf-8", "replace").rstrip("\n"))
    rc = await proc.wait()
    if rc != 0:
        raise BuildError(f"{os.path.basename(cmd[0])} exited with status {rc}")


def _child_env(cache_dir=None):
    # the operator's index/TLS/proxy settings (PIP_*, UV_*, SSL_CERT_FILE, HTTPS_PROXY) apply; an outer venv does not
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "CONDA_"))}
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


async def install(dest, req_file, log, installer="uv", cache_dir=None, no_deps=False, upgrade=()):
    """Install the requirements in ``req_file`` into the env at ``dest``."""
    py = env_python(dest)
    env = _child_env(cache_dir)
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
    await run(cmd, log, env=env, cwd=dest)  # cwd: nothing relative can point at service files


async def freeze(dest):
    """Exact versions of every distribution installed in the env: {name: version}."""
    proc = await asyncio.create_subprocess_exec(
        env_python(dest), "-I", "-c", FREEZE_SCRIPT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise BuildError(f"could not list packages: {err.decode(errors='replace')[-500:]}")
    return json.loads(out)


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


async def smoke_test(dest, package_names, log, timeout=120, run_as=None):
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
    kwargs = {}
    if run_as and os.geteuid() == 0:
        import pwd
        pw = pwd.getpwnam(run_as)
        kwargs = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    env = _child_env()
    env["HOME"] = "/tmp"
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                                                env=env, cwd="/", **kwargs)
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
                    smoke=True, upgrade=(), smoke_packages=None, smoke_user=None):
    """Create the env at ``dest`` from ``requirements`` (resolving) or ``lockfile`` (exact, no resolution).

    Returns the lockfile text of what got installed.
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
        await install(dest, req_file, log, installer=installer, cache_dir=cache_dir, no_deps=no_deps,
                      upgrade=upgrade)
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
            await smoke_test(dest, declared, log, run_as=smoke_user)
        return lock
    finally:
        os.umask(old_umask)
