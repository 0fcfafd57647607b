"""Bin-packing of the shared placement (pure functions: no cloud needed)."""
import pytest

from jhub_broker.spawner.pool.config import PoolConfig
from jhub_broker.spawner.pool.packing import MiB, Capacity, Need, choose, removable_hosts

SMALL = Capacity.of_flavor({"vcpus": 1, "ram": 2048}, reserved_ram_mb=512)
NB = Need(cpu=0.5, mem=700 * MiB)


def test_slots_come_from_the_flavor_minus_what_the_host_keeps():
    assert SMALL.slots(NB) == 2
    assert SMALL.slots(Need(cpu=0.25, mem=700 * MiB)) == 2  # memory bounds it
    assert SMALL.slots(Need(cpu=0.5, mem=100 * MiB)) == 2  # CPU bounds it
    assert Capacity.of_flavor({"vcpus": 1, "ram": 2048}, 512, cpu_overcommit=2.0).slots(Need(0.5, 100 * MiB)) == 4
    assert SMALL.slots(Need(cpu=2, mem=MiB)) == 0


def test_a_notebook_goes_on_the_fullest_host_that_fits():
    hosts = {"empty": (SMALL, []), "half": (SMALL, [NB]), "full": (SMALL, [NB, NB])}
    assert choose(hosts, NB) == "half"
    assert choose({"full": (SMALL, [NB, NB])}, NB) is None
    assert choose({}, NB) is None


def test_only_empty_hosts_beyond_headroom_may_go():
    rows = [("busy", 1, False), ("a", 2, True), ("b", 2, True)]  # (host, free slots, idle and empty)
    assert removable_hosts(rows, headroom=0) == {"a", "b"}
    assert removable_hosts(rows, headroom=1) == {"a", "b"}  # the busy host's free slot is the headroom
    assert removable_hosts(rows, headroom=3) == {"b"}
    assert removable_hosts(rows, headroom=5) == set()
    assert "busy" not in removable_hosts(rows, headroom=0)


def test_pool_config_says_what_to_fix():
    with pytest.raises(ValueError, match="needs a 'flavor'"):
        PoolConfig.from_dict("p", {})
    with pytest.raises(ValueError, match="unknown keys \\['flavour'\\]"):
        PoolConfig.from_dict("p", {"flavor": "m1.small", "flavour": "x"})
    with pytest.raises(ValueError, match="max_hosts"):
        PoolConfig.from_dict("p", {"flavor": "m1.small", "max_hosts": 0})
    assert PoolConfig.from_dict("p", {"flavor": "m1.small"}).headroom == 0
