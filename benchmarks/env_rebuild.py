"""Rebuild of a 20-package environment from its lockfile with a warm cache: virtualenv+pip vs our builder,
and create-to-kernel-visible time of the broker service's manager. Measured side by side in one run.

    python benchmarks/env_rebuild.py [--rounds 3] [--base-python /usr/bin/python3]

Needs network access to the package index for the first (cache-warming) round only.
"""
import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from jhub_broker.services.environments import builder

PACKAGES = ["attrs", "blinker", "certifi", "charset-normalizer", "click", "flask", "idna", "itsdangerous", "jinja2",
            "markupsafe", "packaging", "pyparsing", "python-dateutil", "pytz", "pyyaml", "requests", "six", "tomli",
            "urllib3", "werkzeug"]


def pip_rebuild(dest, base_python, lock_file, cache, no_deps=False):
    """What an admin does by hand: virtualenv, then ``pip install -r requirements.txt`` (pip's cache warm)."""
    subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--no-periodic-update", "--python", base_python, dest],
                   check=True)
    subprocess.run([os.path.join(dest, "bin", "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", "--cache-dir", cache, "-r", lock_file]
                   + (["--no-deps"] if no_deps else []), check=True, stderr=subprocess.DEVNULL)


def ours_rebuild(dest, base_python, lock, cache, smoke=False):
    asyncio.run(builder.build_env(dest, base_python, lambda line: None, lockfile=lock, installer="uv",
                                  cache_dir=cache, smoke=smoke, smoke_packages=[]))


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def create_to_kernel_visible(work, base_python):
    """Service manager: POST-equivalent create of an env with one package until its kernelspec is listed."""
    from jupyter_client.kernelspec import KernelSpecManager

    from jhub_broker.services.db import make_session_factory
    from jhub_broker.services.environments.manager import EnvironmentManager

    async def run():
        root = os.path.join(work, "service")
        m = EnvironmentManager(make_session_factory(os.path.join(work, "bench.sqlite")), root,
                               os.path.join(work, "share", "kernels"), {"3": base_python})
        ksm = KernelSpecManager(kernel_dirs=[os.path.join(work, "share", "kernels")], ensure_native_kernel=False)
        t0 = time.perf_counter()
        m.create("bench", "bench", requirements=["six"])
        while "broker-bench" not in ksm.find_kernel_specs():
            await asyncio.sleep(0.05)
            if not m.tasks and "broker-bench" not in ksm.find_kernel_specs():
                raise RuntimeError(m.read_log("bench", 1).decode())
        return time.perf_counter() - t0
    return asyncio.run(run())


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--base-python", default="/usr/bin/python3")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="jb-bench-")
    try:
        cache = os.path.join(work, "cache")
        # make the lockfile: resolve the 20 packages once with our builder (no ipykernel: just the 20)
        seed = os.path.join(work, "seed")
        asyncio.run(builder.create_venv(seed, args.base_python, lambda line: None))
        req = os.path.join(work, "req.txt")
        with open(req, "w") as f:
            f.write("\n".join(PACKAGES) + "\n")
        asyncio.run(builder.install(seed, req, lambda line: None, installer="uv", cache_dir=cache))
        lock = builder.lock_text(asyncio.run(builder.freeze(seed)))
        lock_file = os.path.join(work, "lock.txt")
        with open(lock_file, "w") as f:
            f.write(lock)
        n = len(lock.splitlines())
        # warm both caches
        pip_rebuild(os.path.join(work, "warm-pip"), args.base_python, lock_file, os.path.join(cache, "pip"))
        ours_rebuild(os.path.join(work, "warm-uv"), args.base_python, lock, cache)
        pip_t, pipnd_t, ours_t = [], [], []
        for i in range(args.rounds):  # interleaved, so all see the same machine load
            pip_t.append(timed(lambda: pip_rebuild(os.path.join(work, f"pip{i}"), args.base_python, lock_file,
                                                   os.path.join(cache, "pip"))))
            pipnd_t.append(timed(lambda: pip_rebuild(os.path.join(work, f"pipnd{i}"), args.base_python, lock_file,
                                                     os.path.join(cache, "pip"), no_deps=True)))
            ours_t.append(timed(lambda: ours_rebuild(os.path.join(work, f"uv{i}"), args.base_python, lock, cache)))
        kernel_t = create_to_kernel_visible(work, args.base_python)
        pip_m, ours_m = statistics.median(pip_t), statistics.median(ours_t)
        print(f"rebuild of a {n}-package environment from its lockfile, warm cache, median of {args.rounds}:")
        print(f"  virtualenv + pip        {pip_m:6.2f} s   ({', '.join(f'{t:.2f}' for t in pip_t)})"
              "   [pip install -r lock.txt]")
        pipnd_m = statistics.median(pipnd_t)
        print(f"  virtualenv + pip -no-deps {pipnd_m:4.2f} s   ({', '.join(f'{t:.2f}' for t in pipnd_t)})"
              f"   [pip's best case; ours is {pipnd_m / ours_m:.1f}x faster]")
        print(f"  jhub_broker builder     {ours_m:6.2f} s   ({', '.join(f'{t:.2f}' for t in ours_t)})"
              f"   [virtualenv --no-seed + uv pip install --no-deps]")
        print(f"  speed-up                {pip_m / ours_m:6.1f} x   goal: ours <= 2 s and >= 10x -> "
              f"{'met' if ours_m <= 2 and pip_m / ours_m >= 10 else 'NOT met'}")
        print(f"create-to-kernel-visible (env with six + ipykernel, incl. kernel smoke test): {kernel_t:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
