"""Floating IPs: forward floating:port to fixed:port for every port a VM listens on.

The connection to the fixed IP is made from the client's own address (every 127.x address is the
host's), so the VM's security-group check (bindshim.c) sees the real source, as behind Neutron's NAT.
"""
import asyncio
import ipaddress
import logging
import socket

log = logging.getLogger("jhub_broker.cloud.vm")

SCAN_INTERVAL = 0.3
TCP_LISTEN = "0A"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def _decode(hex_addr):
    """An address of /proc/net/tcp{,6} (32-bit words in host byte order) as an ip_address."""
    raw = b"".join(bytes.fromhex(hex_addr[i:i + 8])[::-1] for i in range(0, len(hex_addr), 8))
    ip = ipaddress.ip_address(raw)
    if ip.version == 6 and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def listening_ports(address):
    """TCP ports in LISTEN state bound to address (IPv4, or IPv4-mapped on a v6 socket)."""
    want = ipaddress.ip_address(address)
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != TCP_LISTEN:
                continue
            addr, port = fields[1].split(":")
            try:
                if _decode(addr) == want:
                    ports.add(int(port, 16))
            except ValueError:
                continue
    return ports


async def _pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError, OSError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


class FloatingForwarder:
    """Listens on floating:port for each port the fixed address listens on."""

    def __init__(self, floating, fixed):
        self.floating = floating
        self.fixed = fixed
        self.servers = {}  # port -> asyncio.Server
        self.connections = set()
        self._task = None

    async def start(self):
        await self.sync_async()
        self._task = asyncio.ensure_future(self._scan())

    async def _scan(self):
        while True:
            await asyncio.sleep(SCAN_INTERVAL)
            try:
                await self.sync_async()
            except Exception:  # keep forwarding whatever happens to one port
                log.exception("floating IP %s: scan failed", self.floating)

    async def sync_async(self):
        """Listen on the ports the VM now listens on; close the ones it stopped."""
        ports = listening_ports(self.fixed)
        for port in list(self.servers):
            if port not in ports:
                server = self.servers.pop(port)
                server.close()
        for port in ports - set(self.servers):
            try:
                self.servers[port] = await asyncio.start_server(
                    lambda r, w, port=port: self._handle(r, w, port), self.floating, port,
                    reuse_address=True)
            except OSError as e:
                log.warning("floating IP %s: cannot listen on port %s: %s", self.floating, port, e)

    async def _handle(self, reader, writer, port):
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(sock=await self._upstream(writer, port))
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            up_writer.close()
            writer.close()
        finally:
            self.connections.discard(task)

    async def _upstream(self, client, port):
        """A socket connected to fixed:port from the client's address (the host's own if not loopback)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            peer = client.get_extra_info("peername")
            if peer and ipaddress.ip_address(peer[0]).is_loopback:
                # the port is picked at connect time, so the client's address is shared by any number of these
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((peer[0], 0))
            await asyncio.get_running_loop().sock_connect(sock, (self.fixed, port))
            return sock
        except BaseException:
            sock.close()
            raise

    async def stop(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for server in self.servers.values():
            server.close()
        self.servers.clear()
        for task in list(self.connections):
            task.cancel()
