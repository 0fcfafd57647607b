"""Build (once, cached by source hash) the bind() LD_PRELOAD shim of bindshim.c."""
import asyncio
import hashlib
import os
import shutil
import uuid

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bindshim.c")


class ShimBuildError(Exception):
    pass


async def build_shim(cache_dir):
    """Path of the compiled shim under cache_dir, compiling it with gcc if needed.

    Concurrent builds are harmless: each compiles to its own file, then renames.
    """
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    target = os.path.join(cache_dir, f"bindshim-{digest}.so")
    if os.path.exists(target):
        return target
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise ShimBuildError("gcc is not installed: cannot build the VM network shim")
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{target}.{uuid.uuid4().hex}.tmp"
    proc = await asyncio.create_subprocess_exec(
        gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", tmp, SOURCE, "-ldl",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise ShimBuildError("building the VM network shim failed:\n" + out.decode(errors="replace"))
    os.chmod(tmp, 0o755)
    os.replace(tmp, target)
    return target
