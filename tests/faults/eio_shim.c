/* LD_PRELOAD shim that makes write/pwrite/fsync/fdatasync on chosen files fail with EIO.
 *
 * Used by tests/test_faults.py: this machine has no device-mapper (dm-error,
 * dm-flakey), so I/O errors are injected at the system-call boundary of the
 * real process instead. Faults are active while the file named by
 * $SNAPSTORE_EIO_TRIGGER exists, and only for files whose path contains
 * $SNAPSTORE_EIO_MATCH.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int faulty(int fd) {
    const char *trigger = getenv("SNAPSTORE_EIO_TRIGGER");
    const char *match = getenv("SNAPSTORE_EIO_MATCH");
    if (!trigger || !match || access(trigger, F_OK) != 0) return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return strstr(path, match) != NULL;
}

#define WRAP(ret, name, params, args)                      \
    ret name params {                                      \
        static ret (*real) params;                         \
        if (!real) real = dlsym(RTLD_NEXT, #name);         \
        if (faulty(fd)) { errno = EIO; return (ret)-1; }   \
        return real args;                                  \
    }

WRAP(ssize_t, write, (int fd, const void *buf, size_t count), (fd, buf, count))
WRAP(ssize_t, pwrite, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset))
WRAP(ssize_t, pwrite64, (int fd, const void *buf, size_t count, off_t offset), (fd, buf, count, offset))
WRAP(int, fsync, (int fd), (fd))
WRAP(int, fdatasync, (int fd), (fd))
