/* LD_PRELOAD shim loaded (through the VM's private /etc/ld.so.preload) into
 * every dynamically linked process of a local-cloud VM: the VM's own address
 * (bind, connect) and its security groups (accept).
 *
 * VMs share the host's network namespace, so the VM's "own" address is its
 * fixed IP, a 127.x loopback address written to /etc/jhub-broker-vm-address.
 * bind() to a wildcard address is rewritten to that address, so two VMs can
 * both listen on 0.0.0.0:8888:
 *   - AF_INET  0.0.0.0            -> <vm address>
 *   - AF_INET6 ::  (dual stack)   -> ::ffff:<vm address>
 *   - AF_INET6 ::  (IPV6_V6ONLY)  -> the VM has no IPv6 address of its own: the
 *     socket is parked on [::1]:<ephemeral port> so the bind succeeds and the
 *     program's IPv4 socket (bound first by getaddrinfo order) does the work.
 * Anything else, or no address file, is passed through unchanged.
 *
 * connect() of an unbound TCP socket to a 127.x address first binds it to the
 * VM's address (port chosen at connect time), so the VM's connections come
 * from its fixed IP, as on a real cloud, and not from the host's 127.0.0.1.
 *
 * accept()/accept4(): a connection to the VM's address is closed with a reset
 * (the program never sees it) unless its source is the VM itself or matches a
 * line "<net>/<prefix> <port_min> <port_max>" of /etc/jhub-broker/ingress
 * (the ingress rules of the VM's security groups, kept up to date by the
 * cloud; "*" allows everything).  The file is read at every such accept, so
 * rule changes apply to new connections at once; no file, no entry.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif
#define INGRESS_FILE "/etc/jhub-broker/ingress"

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*accept_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);

static int vm_addr_state; /* 0 unknown, 1 loaded, -1 none */
static struct in_addr vm_addr;

static int load_vm_addr(void)
{
    if (vm_addr_state == 0) {
        char buf[64] = {0};
        FILE *f = fopen("/etc/jhub-broker-vm-address", "re");
        vm_addr_state = -1;
        if (f) {
            if (fgets(buf, sizeof buf, f)) {
                buf[strcspn(buf, " \t\r\n")] = 0;
                if (inet_pton(AF_INET, buf, &vm_addr) == 1)
                    vm_addr_state = 1;
            }
            fclose(f);
        }
    }
    return vm_addr_state == 1;
}

static bind_fn real_bind_fn(void)
{
    static bind_fn real_bind;
    if (!real_bind)
        real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
    return real_bind;
}

/* The IPv4 address and port of an AF_INET or v4-mapped AF_INET6 socket address. */
static int v4_of(const struct sockaddr *sa, socklen_t len, struct in_addr *ip, unsigned *port)
{
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        *ip = in->sin_addr;
        *port = ntohs(in->sin_port);
        return 1;
    }
    if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr))
            return 0;
        memcpy(ip, &in6->sin6_addr.s6_addr[12], 4);
        *port = ntohs(in6->sin6_port);
        return 1;
    }
    return 0;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    bind_fn real_bind = real_bind_fn();
    if (!addr || !load_vm_addr())
        return real_bind(fd, addr, len);

    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (in->sin_addr.s_addr == htonl(INADDR_ANY)) {
            struct sockaddr_in copy = *in;
            copy.sin_addr = vm_addr;
            return real_bind(fd, (struct sockaddr *)&copy, sizeof copy);
        }
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr)) {
            struct sockaddr_in6 copy = *in6;
            int v6only = 0;
            socklen_t optlen = sizeof v6only;
            if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen) == 0 && v6only) {
                copy.sin6_addr = in6addr_loopback;
                copy.sin6_port = 0;
            } else {
                memset(&copy.sin6_addr, 0, sizeof copy.sin6_addr);
                copy.sin6_addr.s6_addr[10] = 0xff;
                copy.sin6_addr.s6_addr[11] = 0xff;
                memcpy(&copy.sin6_addr.s6_addr[12], &vm_addr, 4);
            }
            return real_bind(fd, (struct sockaddr *)&copy, sizeof copy);
        }
    }
    return real_bind(fd, addr, len);
}

/* Before connect(): an unbound TCP socket heading for a 127.x address gets the VM's address. */
static void source_from_vm(int fd, const struct sockaddr *dst, socklen_t len)
{
    struct in_addr ip;
    unsigned port;
    int type = 0;
    socklen_t tlen = sizeof type;
    struct sockaddr_storage cur;
    socklen_t clen = sizeof cur;

    if (!v4_of(dst, len, &ip, &port) || (ntohl(ip.s_addr) >> 24) != 127)
        return;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) != 0 || type != SOCK_STREAM)
        return;
    if (getsockname(fd, (struct sockaddr *)&cur, &clen) != 0)
        return;
    if (cur.ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&cur;
        if (in->sin_port != 0 || in->sin_addr.s_addr != htonl(INADDR_ANY))
            return;
        in->sin_addr = vm_addr;
    } else if (cur.ss_family == AF_INET6 && dst->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&cur;
        if (in6->sin6_port != 0 || !IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr))
            return;
        in6->sin6_addr.s6_addr[10] = 0xff;
        in6->sin6_addr.s6_addr[11] = 0xff;
        memcpy(&in6->sin6_addr.s6_addr[12], &vm_addr, 4);
    } else {
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    real_bind_fn()(fd, (struct sockaddr *)&cur, clen);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    static connect_fn real_connect;
    if (!real_connect)
        real_connect = (connect_fn)dlsym(RTLD_NEXT, "connect");
    if (addr && load_vm_addr()) {
        int saved = errno;
        source_from_vm(fd, addr, len);
        errno = saved;
    }
    return real_connect(fd, addr, len);
}

/* Whether the ingress list lets peer reach the VM's port. */
static int ingress_allowed(struct in_addr peer, unsigned port)
{
    char line[160];
    int ok = 0;
    FILE *f;

    if (peer.s_addr == vm_addr.s_addr)
        return 1;
    f = fopen(INGRESS_FILE, "re");
    if (!f)
        return 0;
    while (!ok && fgets(line, sizeof line, f)) {
        char net[64];
        unsigned prefix, low, high;
        struct in_addr n;
        if (line[0] == '*') {
            ok = 1;
            break;
        }
        if (sscanf(line, "%63[0-9.]/%u %u %u", net, &prefix, &low, &high) != 4 || prefix > 32)
            continue;
        if (inet_pton(AF_INET, net, &n) != 1)
            continue;
        uint32_t mask = prefix ? htonl(0xffffffffu << (32 - prefix)) : 0;
        if ((peer.s_addr & mask) == (n.s_addr & mask) && port >= low && port <= high)
            ok = 1;
    }
    fclose(f);
    return ok;
}

/* Whether a just-accepted connection must be refused: it is to the VM's address and not allowed in. */
static int refused(int conn)
{
    struct sockaddr_storage local, peer;
    socklen_t llen = sizeof local, plen = sizeof peer;
    struct in_addr lip, pip;
    unsigned lport, pport;

    if (!load_vm_addr())
        return 0;
    if (getsockname(conn, (struct sockaddr *)&local, &llen) != 0 ||
        !v4_of((struct sockaddr *)&local, llen, &lip, &lport) || lip.s_addr != vm_addr.s_addr)
        return 0;
    if (getpeername(conn, (struct sockaddr *)&peer, &plen) != 0 ||
        !v4_of((struct sockaddr *)&peer, plen, &pip, &pport))
        return 0;
    return !ingress_allowed(pip, lport);
}

static void reset(int conn)
{
    struct linger now = {1, 0};
    setsockopt(conn, SOL_SOCKET, SO_LINGER, &now, sizeof now);
    close(conn);
}

/* A refused connection is reset and the next one accepted: a blocking listener waits for it, a
 * non-blocking one answers EAGAIN when there is none, as if the refused one had never arrived. */
int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    static accept4_fn real_accept4;
    if (!real_accept4)
        real_accept4 = (accept4_fn)dlsym(RTLD_NEXT, "accept4");
    for (;;) {
        socklen_t room = len ? *len : 0;
        int conn = real_accept4(fd, addr, len, flags);
        if (conn < 0 || !refused(conn))
            return conn;
        reset(conn);
        if (len)
            *len = room;
    }
}

int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    static accept_fn real_accept;
    if (!real_accept)
        real_accept = (accept_fn)dlsym(RTLD_NEXT, "accept");
    for (;;) {
        socklen_t room = len ? *len : 0;
        int conn = real_accept(fd, addr, len);
        if (conn < 0 || !refused(conn))
            return conn;
        reset(conn);
        if (len)
            *len = room;
    }
}
