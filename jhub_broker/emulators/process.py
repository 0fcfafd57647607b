"""Stopping the helper processes the emulators start (oidc-provider, moto)."""
import subprocess


def stop_process(proc, timeout=10):
    """SIGTERM, then SIGKILL after ``timeout`` seconds; a no-op for a process already gone."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
