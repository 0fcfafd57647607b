"""Pure bin-packing for the shared placement: which host a notebook goes on, how many fit on a host.

A host's capacity comes from its flavor: vCPUs (times ``cpu_overcommit``) and RAM minus what the
host's own software takes (``reserved_ram_mb``: dockerd, containerd, the shims). A notebook reserves its
profile's ``cpu_limit`` and ``mem_limit`` -- the limits Docker enforces, so reservations never
overcommit memory. A notebook goes on the *fullest* host that still fits it: load piles onto few hosts
and the others empty out and can be deleted (the opposite of a spreading scheduler such as Swarm's).
"""
from dataclasses import dataclass

MiB = 2 ** 20


@dataclass(frozen=True)
class Need:
    cpu: float  # vCPU
    mem: int  # bytes


@dataclass(frozen=True)
class Capacity:
    cpu: float
    mem: int

    @classmethod
    def of_flavor(cls, flavor, reserved_ram_mb=512, cpu_overcommit=1.0):
        return cls(cpu=flavor["vcpus"] * cpu_overcommit, mem=max(0, flavor["ram"] - reserved_ram_mb) * MiB)

    def slots(self, need):
        """How many notebooks of ``need`` fit on an empty host."""
        by_cpu = int(self.cpu // need.cpu) if need.cpu > 0 else 10 ** 6
        by_mem = int(self.mem // need.mem) if need.mem > 0 else 10 ** 6
        return max(0, min(by_cpu, by_mem))


def used(reservations):
    return Need(cpu=sum(r.cpu for r in reservations), mem=sum(r.mem for r in reservations))


def fits(capacity, reservations, need):
    u = used(reservations)
    # a little slack for float sums of cpu limits (0.1 + 0.2 ...)
    return u.cpu + need.cpu <= capacity.cpu + 1e-9 and u.mem + need.mem <= capacity.mem


def choose(hosts, need):
    """The id of the fullest host that still fits ``need``, or None.

    ``hosts``: {host id: (Capacity, [Need, ...])}. Fullest = least free memory left after placing,
    then least free CPU; ties by id, so the choice is deterministic.
    """
    best, best_key = None, None
    for hid, (cap, res) in hosts.items():
        if not fits(cap, res, need):
            continue
        u = used(res)
        key = (cap.mem - u.mem - need.mem, cap.cpu - u.cpu - need.cpu, hid)
        if best_key is None or key < best_key:
            best, best_key = hid, key
    return best


def removable_hosts(free_slots_by_host, headroom):
    """Which empty hosts may be deleted while keeping at least ``headroom`` free slots remain in the pool.

    ``free_slots_by_host``: [(host id, free slots, empty?)] ; returns the set of empty host ids that may go.
    Busy hosts' free slots count toward the headroom first.
    """
    free = sum(n for _, n, empty in free_slots_by_host if not empty)
    removable = set()
    for hid, n, empty in sorted((h for h in free_slots_by_host if h[2]), key=lambda h: h[0]):
        if free >= headroom:
            removable.add(hid)
        else:
            free += n
    return removable
