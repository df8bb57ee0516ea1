/* Tries syscalls a seccomp profile decides on and prints, for each, `ok`
 * or the errno it failed with: `name=ok` / `name=errno:N`. Built static by
 * tests/tests/features.rs and run inside containers. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long rc) {
    if (rc < 0)
        printf("%s=errno:%d\n", name, errno);
    else
        printf("%s=ok\n", name);
}

int main(void) {
    pid_t self = getpid();
    /* KCMP_FILE of fd 0 against itself: allowed by the kernel to anyone. */
    report("kcmp", syscall(SYS_kcmp, self, self, 0, 0, 0));
    /* ADDR_NO_RANDOMIZE: not one of the personalities programs set. */
    report("personality", personality(0x0040000));
    /* A syscall number no kernel has: ENOSYS unconfined. */
    report("sys999", syscall(999));
    report("unshare", unshare(CLONE_NEWUSER));
    /* KEYCTL_GET_KEYRING_ID of the session keyring, creating it. */
    report("keyctl", syscall(SYS_keyctl, 0, -3, 1));
    report("getpid", getpid());
    report("socket_inet", socket(AF_INET, SOCK_STREAM, 0));
    fflush(stdout);
    return 0;
}
