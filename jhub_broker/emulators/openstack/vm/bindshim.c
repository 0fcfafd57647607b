/* LD_PRELOAD shim loaded (through the VM's private /etc/ld.so.preload) into
 * every dynamically linked process of a local-cloud VM.
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
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

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

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static bind_fn real_bind;
    if (!real_bind)
        real_bind = (bind_fn)dlsym(RTLD_NEXT, "bind");
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
