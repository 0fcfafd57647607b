"""The service's state on a real PostgreSQL server (a throwaway cluster on a loopback port)."""
import os
import shutil
import socket
import subprocess
import tempfile

import pytest

PG_BIN = "/usr/lib/postgresql/15/bin"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    if not os.path.exists(os.path.join(PG_BIN, "initdb")):
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql)")
    try:
        import psycopg  # noqa: F401
        driver = "postgresql+psycopg"
    except ImportError:
        try:
            import psycopg2  # noqa: F401
            driver = "postgresql+psycopg2"
        except ImportError:
            pytest.skip("no PostgreSQL driver (pip install 'psycopg[binary]')")
    d = tempfile.mkdtemp(prefix="jb-pg-")
    os.chmod(d, 0o755)
    data = os.path.join(d, "data")
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_pg:
        shutil.chown(d, "postgres")
    subprocess.run(as_pg + [f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "broker"], check=True,
                   capture_output=True)
    subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(d, "log"), "-w", "-o",
                            f"-c listen_addresses=127.0.0.1 -p {port} -k {d}", "start"], check=True, capture_output=True)
    try:
        subprocess.run(as_pg + [f"{PG_BIN}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "broker", "broker"],
                       check=True, capture_output=True)
        yield f"{driver}://broker@127.0.0.1:{port}/broker"
    finally:
        subprocess.run(as_pg + [f"{PG_BIN}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


async def test_manager_state_round_trips_on_postgres(postgres_url, tmp_path):
    """Environments, builds and history survive a restart of the service against PostgreSQL."""
    from jhub_broker.services.db import make_session_factory
    from jhub_broker.services.environments.manager import EnvironmentManager

    def manager():
        return EnvironmentManager(make_session_factory(postgres_url), str(tmp_path / "envs"),
                                  str(tmp_path / "kernels"), {"3.11": "/usr/bin/python3"})

    m = manager()
    b = m.create("admin", "pgenv", requirements=["six"], display_name="PG env")
    await m.wait_idle()
    assert m.get_env("pgenv").current_build_id == b.id, m.read_log("pgenv", 1).decode()

    m2 = manager()  # a restarted service: a new engine and session
    env = m2.get_env("pgenv")
    assert env.display_name == "PG env" and env.requirements == ["six"]
    cur = m2.current_build(env)
    assert cur.status == "ready" and "six==" in cur.lockfile
    assert [(a.user, a.action, a.result) for a in m2.history()] == [("admin", "create", "ok")]
    assert (tmp_path / "kernels" / "broker-pgenv" / "kernel.json").exists()
