"""The VM lifecycle in the cloud: volumes, servers, addresses, security groups, teardown.

Knows nothing about what runs on the VM; the spawner (one notebook per VM) and
any later placement (e.g. shared Docker hosts) drive it.
"""
import asyncio
import base64
import logging
import time

from openstack import exceptions as os_exc

from .cloud import CloudError, error_text

log = logging.getLogger("jhub_broker.spawner.lifecycle")

HUB_TAG_PREFIX = "jhub-broker-hub-"


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
        def get(conn):
            lim = conn.compute.get_limits().absolute
            return {"instances": (lim.instances_used, lim.instances), "cores": (lim.total_cores_used, lim.total_cores),
                    "ram": (lim.total_ram_used, lim.total_ram)}
        return await self.adapter.run(get)

    # -- security group --------------------------------------------------------------------
    async def ensure_security_group(self, port, cidrs):
        name = f"jhub-broker-{self.hub_id}"
        async with self._sg_lock:
            key = ("sg", name, port, tuple(cidrs))
            hit = self._lookups.get(key)
            if hit:
                return hit[1]

            def ensure(conn):
                sg = conn.network.find_security_group(name, ignore_missing=True)
                if sg is None:
                    sg = conn.network.create_security_group(
                        name=name, description=f"jhub_broker: notebook port {port} from the hub only")
                    try:
                        conn.network.set_tags(sg, [self.tag])
                    except os_exc.SDKException:
                        pass
                have = {(r.port_range_min, r.remote_ip_prefix) for r in conn.network.security_group_rules(
                    security_group_id=sg.id) if r.direction == "ingress"}
                for cidr in cidrs:
                    if (port, cidr) not in have:
                        conn.network.create_security_group_rule(
                            security_group_id=sg.id, direction="ingress", ethertype="IPv6" if ":" in cidr else "IPv4",
                            protocol="tcp", port_range_min=port, port_range_max=port, remote_ip_prefix=cidr)
                return sg.name
            value = await self.adapter.run(ensure)
            self._lookups[key] = (float("inf"), value)
            return value

    # -- volumes -------------------------------------------------------------------------
    async def ensure_volume(self, volume_id, name, size, metadata, volume_type=None, availability_zone=None,
                            timeout=180):
        """The user's data volume: the one in state, else the one named so, else a new one."""
        def find(conn):
            if volume_id:
                vol = conn.block_storage.find_volume(volume_id, ignore_missing=True)
                if vol is not None:
                    return vol.id, False
            for vol in conn.block_storage.volumes(details=True, name=name):
                if (vol.metadata or {}).get("jhub_broker_hub") == self.hub_id:
                    return vol.id, False
            attrs = {"name": name, "size": size, "metadata": metadata,
                     "description": "jhub_broker: notebook data, kept when the server stops"}
            if volume_type:
                attrs["volume_type"] = volume_type
            if availability_zone:
                attrs["availability_zone"] = availability_zone
            return conn.block_storage.create_volume(**attrs).id, True

        vid, created = await self.adapter.run(find, idempotent=False)
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

    async def delete_volume(self, volume_id):
        def delete(conn):
            conn.block_storage.delete_volume(volume_id, ignore_missing=True)
        await self.adapter.run(delete)

    # -- servers ---------------------------------------------------------------------------
    async def create_server(self, *, name, image_id, flavor_id, network_ids, security_groups, user_data,
                            metadata, tags, key_name=None, availability_zone=None, volume_id=None):
        attrs = {"name": name, "image_id": image_id, "flavor_id": flavor_id,
                 "networks": [{"uuid": n} for n in network_ids],
                 "security_groups": [{"name": g} for g in security_groups],
                 "metadata": metadata, "tags": tags,
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
        server = await self.adapter.run(lambda conn: conn.compute.create_server(**attrs), idempotent=False)
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

    async def attach_floating_ip(self, server_id, pool, description):
        def attach(conn):
            net = conn.network.find_network(pool, ignore_missing=True)
            if net is None or not net.is_router_external:
                raise CloudError(f"The floating IP pool {pool!r} is not an external network of this cloud.")
            ports = list(conn.network.ports(device_id=server_id))
            if not ports:
                raise CloudError("The server has no network port to attach a floating IP to.")
            fip = conn.network.create_ip(floating_network_id=net.id, port_id=ports[0].id, description=description)
            try:
                conn.network.set_tags(fip, [self.tag])
            except os_exc.SDKException:
                pass
            return fip.id, fip.floating_ip_address
        return await self.adapter.run(attach, idempotent=False)

    async def release_floating_ip(self, fip_id):
        await self.adapter.run(lambda conn: conn.network.delete_ip(fip_id, ignore_missing=True))
