"""The VM lifecycle in the cloud: volumes, servers, addresses, security groups, teardown.

Knows nothing about what runs on the VM; the spawner (one notebook per VM) and
any later placement (e.g. shared Docker hosts) drive it.
"""
import asyncio
import base64
import logging
import secrets
import time

from openstack import exceptions as os_exc

from .cloud import CloudError

log = logging.getLogger("jhub_broker.spawner.lifecycle")

HUB_TAG_PREFIX = "jhub-broker-hub-"
# shared-pool hosts carry this tag (plus the pool's name) next to the hub tag
POOL_TAG_PREFIX = "jhub-broker-pool-"


def hub_tag(hub_id):
    return HUB_TAG_PREFIX + hub_id


class VMLifecycle:
    def __init__(self, adapter, hub_id):
        self.adapter = adapter
        self.hub_id = hub_id
        self.tag = hub_tag(hub_id)
        self._sg_lock = asyncio.Lock()
        self._lookups = {}

    # -- lookups (cached: flavors, images and networks rarely change) -----------
    async def _cached(self, key, fn, *args):
        hit = self._lookups.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        value = await self.adapter.run(fn, *args)
        self._lookups[key] = (time.monotonic() + 300, value)
        return value

    async def flavor(self, name_or_id):
        def find(conn, n):
            f = conn.compute.find_flavor(n, ignore_missing=True)
            if f is None:
                raise CloudError(f"The flavor {n!r} does not exist in this cloud.")
            return {"id": f.id, "name": f.name, "vcpus": f.vcpus, "ram": f.ram, "disk": f.disk}
        return await self._cached(("flavor", name_or_id), find, name_or_id)

    async def image(self, name_or_id):
        def find(conn, n):
            i = conn.image.find_image(n, ignore_missing=True)
            if i is None:
                raise CloudError(f"The image {n!r} does not exist in this cloud.")
            return {"id": i.id, "name": i.name, "min_ram": i.min_ram or 0, "min_disk": i.min_disk or 0,
                    "properties": dict(i.properties or {})}
        return await self._cached(("image", name_or_id), find, name_or_id)

    async def flavors(self):
        def listing(conn):
            return [{"id": f.id, "name": f.name, "vcpus": f.vcpus, "ram": f.ram, "disk": f.disk}
                    for f in conn.compute.flavors(details=True)]
        return await self._cached(("flavors",), listing)

    async def images(self):
        def listing(conn):
            return [{"id": i.id, "name": i.name, "min_ram": i.min_ram or 0, "min_disk": i.min_disk or 0}
                    for i in conn.image.images() if i.status == "active"]
        return await self._cached(("images",), listing)

    async def network_ids(self, names):
        def resolve(conn, names):
            if names:
                out = []
                for n in names:
                    net = conn.network.find_network(n, ignore_missing=True)
                    if net is None:
                        raise CloudError(f"The network {n!r} does not exist in this cloud.")
                    out.append(net.id)
                return out
            nets = [n for n in conn.network.networks() if not n.is_router_external]
            own = [n for n in nets if not n.is_shared] or nets
            if len(own) != 1:
                raise CloudError("Set c.OpenStackSpawner.networks: the project has "
                                 f"{len(own)} candidate networks ({', '.join(n.name for n in own)}).")
            return [own[0].id]
        return await self._cached(("networks", tuple(names)), resolve, list(names))

    async def limits(self):
        """Used and allowed: servers, vCPUs, RAM (Nova) and volume gigabytes (Cinder); a limit < 0 is unlimited."""
        def compute(conn):
            lim = conn.compute.get_limits().absolute
            return {"instances": (lim.instances_used, lim.instances), "cores": (lim.total_cores_used, lim.total_cores),
                    "ram": (lim.total_ram_used, lim.total_ram)}

        def volume(conn):
            lim = conn.block_storage.get_limits().absolute
            return (lim.total_gigabytes_used, lim.max_total_volume_gigabytes)
        async def volume_or_none():
            try:
                return await self.adapter.run(volume)
            except Exception as e:  # noqa: BLE001 - a cloud without Cinder limits still has Nova's
                log.info("no volume limits from the cloud: %s", e)
                return None
        out, gigabytes = await asyncio.gather(self.adapter.run(compute), volume_or_none())
        if gigabytes is not None:
            out["gigabytes"] = gigabytes
        return out

    # -- tags ------------------------------------------------------------------------------
    async def _tag_or_delete(self, what, resource, tags, delete):
        """Apply ``tags`` (retried like every idempotent call); a resource that stays untagged is
        deleted: the reaper finds this hub's resources by their tag, so an untagged one would leak."""
        try:
            await self.adapter.run(lambda conn: conn.network.set_tags(resource, tags))
        except Exception as exc:
            log.error("could not tag the new %s %s: %s; deleting it", what, resource.id, exc)
            try:
                await self.adapter.run(delete)
            except Exception as e:  # noqa: BLE001
                log.error("could not delete the untagged %s %s: %s", what, resource.id, e)
            raise

    # -- security group --------------------------------------------------------------------
    async def ensure_security_group(self, port, cidrs):
        name = f"jhub-broker-{self.hub_id}"
        async with self._sg_lock:
            key = ("sg", name, port, tuple(cidrs))
            hit = self._lookups.get(key)
            if hit:
                return hit[1]

            def find(conn):
                return conn.network.find_security_group(name, ignore_missing=True)

            sg = await self.adapter.run(find)
            made = sg is None
            if made:
                sg = await self.adapter.create(
                    lambda conn: conn.network.create_security_group(
                        name=name, description=f"jhub_broker: notebook port {port} from the hub only"),
                    find, "security group")
            if self.tag not in (sg.tags or []):
                tags = sorted(set(sg.tags or []) | {self.tag})
                if made:
                    await self._tag_or_delete("security group", sg, tags,
                                              lambda conn: conn.network.delete_security_group(sg, ignore_missing=True))
                else:  # an existing group may be in use by running servers: never deleted here
                    await self.adapter.run(lambda conn: conn.network.set_tags(sg, tags))

            def rules(conn):
                return {(r.port_range_min, r.remote_ip_prefix) for r in conn.network.security_group_rules(
                    security_group_id=sg.id) if r.direction == "ingress"}
            have = await self.adapter.run(rules)
            for cidr in cidrs:
                if (port, cidr) in have:
                    continue

                def make(conn, cidr=cidr):
                    try:
                        return conn.network.create_security_group_rule(
                            security_group_id=sg.id, direction="ingress",
                            ethertype="IPv6" if ":" in cidr else "IPv4", protocol="tcp",
                            port_range_min=port, port_range_max=port, remote_ip_prefix=cidr)
                    except os_exc.ConflictException:
                        return True  # Neutron: the same rule exists already

                def find_rule(conn, cidr=cidr):
                    return True if (port, cidr) in rules(conn) else None
                await self.adapter.create(make, find_rule, "security group rule")
            self._lookups[key] = (float("inf"), sg.name)
            return sg.name

    # -- volumes -------------------------------------------------------------------------
    async def ensure_volume(self, volume_id, name, size, metadata, volume_type=None, availability_zone=None,
                            timeout=180):
        """The user's data volume: the one in state, else the one named so, else a new one.

        Cinder volumes have no tags: the hub tag goes into the volume's metadata
        (``jhub_broker_tag``, next to ``jhub_broker_hub``, ``jhub_broker_user``), which
        adoption (here) and the reaper read.
        """
        def find_named(conn):
            for vol in conn.block_storage.volumes(details=True, name=name):
                if (vol.metadata or {}).get("jhub_broker_hub") == self.hub_id:
                    return vol.id
            return None

        vid = await self.find_volume(volume_id, name)
        created = vid is None
        if created:
            attrs = {"name": name, "size": size, "metadata": dict(metadata, jhub_broker_tag=self.tag),
                     "description": "jhub_broker: notebook data, kept when the server stops"}
            if volume_type:
                attrs["volume_type"] = volume_type
            if availability_zone:
                attrs["availability_zone"] = availability_zone
            # the name is the user's and the metadata the hub's: what a lost create made is found by them
            vid = await self.adapter.create(lambda conn: conn.block_storage.create_volume(**attrs).id,
                                            find_named, "data volume")
        deadline = time.monotonic() + timeout
        while True:
            status = await self.adapter.run(lambda conn: conn.block_storage.get_volume(vid).status)
            if status == "available":
                return vid, created
            if status == "error":
                raise CloudError(f"The data volume {name} is in error state in the cloud.")
            if time.monotonic() > deadline:
                raise CloudError(f"The data volume {name} was not available after {timeout:.0f} s "
                                 f"(status {status}): is it still attached to another server?")
            await asyncio.sleep(0.2)

    async def find_volume(self, volume_id, name):
        """The id of the user's data volume (by id, else by name and this hub's metadata), or None."""
        def find(conn):
            if volume_id:
                vol = conn.block_storage.find_volume(volume_id, ignore_missing=True)
                if vol is not None:
                    return vol.id
            for vol in conn.block_storage.volumes(details=True, name=name):
                if (vol.metadata or {}).get("jhub_broker_hub") == self.hub_id:
                    return vol.id
            return None
        return await self.adapter.run(find)

    async def delete_volume(self, volume_id):
        def delete(conn):
            conn.block_storage.delete_volume(volume_id, ignore_missing=True)
        await self.adapter.run(delete)

    async def attach_volume(self, server_id, volume_id, timeout=180):
        """Hot-attach the volume to a running server (the shared placement's host); wait until in-use."""
        def attached(conn):
            return any(a.volume_id == volume_id for a in conn.compute.volume_attachments(server_id))

        def attach(conn):
            if not attached(conn):
                conn.compute.create_volume_attachment(server_id, volume_id=volume_id)
        # attaching twice is refused by the cloud, so a lost answer is checked for by listing first
        await self.adapter.create(attach, lambda conn: True if attached(conn) else None, "volume attachment")
        await self._wait_volume(volume_id, "in-use", timeout)

    async def detach_volume(self, server_id, volume_id, timeout=180):
        def detach(conn):
            try:
                conn.compute.delete_volume_attachment(server_id, volume_id, ignore_missing=True)
            except os_exc.NotFoundException:
                pass
        await self.adapter.run(detach)
        await self._wait_volume(volume_id, "available", timeout)

    async def _wait_volume(self, volume_id, want, timeout):
        deadline = time.monotonic() + timeout
        while True:
            status = await self.adapter.run(lambda conn: conn.block_storage.get_volume(volume_id).status)
            if status == want:
                return
            if status == "error" or time.monotonic() > deadline:
                raise CloudError(f"The data volume {volume_id} did not become {want} (status {status}).")
            await asyncio.sleep(0.2)

    # -- servers ---------------------------------------------------------------------------
    async def create_server(self, *, name, image_id, flavor_id, network_ids, security_groups, user_data,
                            metadata, tags, key_name=None, availability_zone=None, volume_id=None):
        # a marker of this request only: after a lost answer the server it made is told apart
        # from any other of the same name (e.g. one of an earlier attempt, still being deleted)
        marker = secrets.token_hex(8)
        attrs = {"name": name, "image_id": image_id, "flavor_id": flavor_id,
                 "networks": [{"uuid": n} for n in network_ids],
                 "security_groups": [{"name": g} for g in security_groups],
                 "metadata": dict(metadata, jhub_broker_request=marker), "tags": tags,
                 "user_data": base64.b64encode(user_data.encode()).decode()}
        if key_name:
            attrs["key_name"] = key_name
        if availability_zone:
            attrs["availability_zone"] = availability_zone
        if volume_id:
            attrs["block_device_mapping"] = [
                {"boot_index": 0, "uuid": image_id, "source_type": "image", "destination_type": "local",
                 "delete_on_termination": True},
                {"boot_index": -1, "uuid": volume_id, "source_type": "volume", "destination_type": "volume",
                 "delete_on_termination": False}]

        def find(conn):
            for s in conn.compute.servers(details=True, tags=self.tag):
                if s.name == name and (s.metadata or {}).get("jhub_broker_request") == marker:
                    return s
            return None
        server = await self.adapter.create(lambda conn: conn.compute.create_server(**attrs), find, "server")
        return server.id

    async def server_fault(self, server_id):
        def get(conn):
            s = conn.compute.get_server(server_id)
            fault = s.fault or {}
            return fault.get("message") if isinstance(fault, dict) else str(fault)
        try:
            return await self.adapter.run(get)
        except Exception:  # noqa: BLE001
            return None

    async def console_tail(self, server_id, lines=20):
        def get(conn):
            out = conn.compute.get_server_console_output(server_id, length=lines)
            return out.get("output", "") if isinstance(out, dict) else str(out)
        try:
            return (await self.adapter.run(get)).strip()
        except Exception:  # noqa: BLE001
            return ""

    async def delete_server(self, server_id, timeout=180):
        def delete(conn):
            conn.compute.delete_server(server_id, ignore_missing=True)

        def gone(conn):
            try:
                s = conn.compute.get_server(server_id)
            except os_exc.NotFoundException:
                return True
            return s.status == "DELETED"
        await self.adapter.run(delete)
        deadline = time.monotonic() + timeout
        while not await self.adapter.run(gone):
            if time.monotonic() > deadline:
                raise CloudError(f"The server {server_id} was not deleted within {timeout:.0f} s.")
            await asyncio.sleep(0.2)

    # -- addresses ----------------------------------------------------------------------------
    @staticmethod
    def fixed_ip(entry):
        for addrs in (entry.get("addresses") or {}).values():
            for a in addrs:
                if a.get("OS-EXT-IPS:type", "fixed") == "fixed" and a.get("version", 4) == 4:
                    return a["addr"]
        return None

    @property
    def fip_mark(self):
        """How the description of this hub's floating IPs begins."""
        return f"jhub_broker hub={self.hub_id} "

    def fip_description(self, user, server=""):
        """What a floating IP says about itself (Neutron has no metadata on floating IPs): hub, user, server."""
        text = f"{self.fip_mark}user={user}" + (f" server={server}" if server else "")
        return text[:255]

    async def attach_floating_ip(self, server_id, pool, description):
        """A floating IP from ``pool`` on the server's port, tagged with the hub tag.

        One cloud call per step, so each read is retried on its own and the create is
        safe to repeat (a lost create is found again by the port it was made for).
        """
        net = await self._cached(("pool", pool),
                                 lambda conn, p: conn.network.find_network(p, ignore_missing=True), pool)
        if net is None or not net.is_router_external:
            raise CloudError(f"The floating IP pool {pool!r} is not an external network of this cloud.")
        ports = await self.adapter.run(lambda conn: [p.id for p in conn.network.ports(device_id=server_id)])
        if not ports:
            raise CloudError("The server has no network port to attach a floating IP to.")
        port_id = ports[0]

        def find(conn):
            return next(iter(conn.network.ips(port_id=port_id)), None)
        fip = await self.adapter.create(
            lambda conn: conn.network.create_ip(floating_network_id=net.id, port_id=port_id,
                                                description=description),
            find, "floating IP")
        if self.tag not in (fip.tags or []):
            await self._tag_or_delete("floating IP", fip, sorted(set(fip.tags or []) | {self.tag}),
                                      lambda conn: conn.network.delete_ip(fip.id, ignore_missing=True))
        return fip.id, fip.floating_ip_address

    async def release_floating_ip(self, fip_id):
        await self.adapter.run(lambda conn: conn.network.delete_ip(fip_id, ignore_missing=True))
