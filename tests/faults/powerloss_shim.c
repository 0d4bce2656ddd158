/* LD_PRELOAD shim that keeps the durable image of a folder: what a power loss would leave of it.
 *
 * Used by tests/crash/powerloss.py (tests/test_power_loss.py). This machine
 * has no device-mapper (dm-log-writes, dm-flakey) to replay a disk's
 * flushes, so the flushes are observed at the system-call boundary of the
 * real process instead. For every file and folder under $SNAPSTORE_POWERLOSS_WATCH
 * the shim keeps, under $SNAPSTORE_POWERLOSS_SHADOW, the state a power loss
 * would leave in the strict model "everything not flushed is lost":
 *
 * - A regular file's bytes (and length) are durable as they were at its last
 *   fsync or fdatasync (POSIX: fdatasync also writes the metadata needed to
 *   read the data back, which includes the length). Writes, truncations and
 *   an O_TRUNC after that are lost.
 * - A folder's entries (name -> file) are durable as they were at its last
 *   fsync or fdatasync. So a file created, linked or renamed into a folder
 *   exists in the image only once that folder was fsynced afterwards, an
 *   unlink or a rename away is undone until then, and a new folder starts
 *   empty and exists only once its parent was fsynced. fsync of a file never
 *   makes its name durable (Linux's fsync(2) says so explicitly).
 *
 * This is stricter than ext4 (data=ordered journals a rename together with
 * the names, and commits unflushed data before the metadata that points at
 * it), and it allows images no real file system would produce (a file
 * renamed between two folders can survive under both names): a program that
 * passes under it relies only on what POSIX promises for fsync.
 *
 * The state is sampled at each flush instead of replaying every call: the
 * durable image is, by this model, a function of what the files and folders
 * held at their flushes, so writes, renames, unlinks, links and truncations
 * need no bookkeeping of their own. Only the creation of a file or folder
 * is tracked (open/openat/open64/openat64/creat/creat64 with O_CREAT,
 * mkdir/mkdirat): an inode number freed by an unlink is reused by the file
 * system, and the durable bytes of the old file (still named by a folder
 * whose unlink was not flushed) must not become the new file's. Each inode
 * therefore has a generation, bumped when a call here creates it, and the
 * image keys contents and listings by device, inode and generation.
 *
 * Shadow layout (each file replaced whole by rename, so a reader that stops
 * the process with SIGSTOP at any moment sees whole files):
 *   gen/<dev>-<ino>          the inode's current generation (missing: 0)
 *   data/<dev>-<ino>-<gen>   a regular file's durable bytes (missing: empty)
 *   dir/<dev>-<ino>-<gen>    a folder's durable entries, one "<d|f> <key> <name>" line
 *                            each (missing: empty); other kinds of entry are left out
 *
 * With $SNAPSTORE_POWERLOSS_HISTORY set, every published sample is also kept
 * (hard-linked, as the next sample replaces data/ or dir/ by rename) as
 *   history/<n> <kind> <key>  with n the process's flush count (20 digits)
 * so the image after each flush, every moment a power loss can make a
 * difference, can be built afterwards (tests/crash/powerloss.py,
 * materialise_at). One process writes under the watched folder at a time.
 *
 * Not modelled (none is used by snapstore; a program relying on one would
 * look less durable, never more): sync(), syncfs(), msync() of a shared
 * mapping, O_SYNC/O_DSYNC writes. SQLite's -shm file is written through a
 * shared mapping and never flushed; tests/crash/powerloss.py leaves it out
 * of images, as SQLite rebuilds it from the WAL on the first open.
 * Files are found by /proc/self/fd/<fd>, so no table of descriptors (dup,
 * close) is needed. A shim that cannot write the shadow aborts the process:
 * a silently wrong image would make the test pass or fail for nothing.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

static pthread_mutex_t shadow_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned long tmp_counter;

static void die(const char *what, const char *path) {
    char message[PATH_MAX + 200];
    int n = snprintf(message, sizeof message, "powerloss_shim: %s %s: %s\n", what, path, strerror(errno));
    if (write(2, message, n > 0 ? (size_t)n : 0) < 0) { /* nothing more to do */ }
    abort();
}

static const char *watched(void) { return getenv("SNAPSTORE_POWERLOSS_WATCH"); }
static const char *shadow(void) { return getenv("SNAPSTORE_POWERLOSS_SHADOW"); }

/* The shim's own file operations go straight to the kernel, never through the wrappers below. */
static int sys_open(int dirfd, const char *path, int flags, mode_t mode) {
    return (int)syscall(SYS_openat, dirfd, path, flags | O_CLOEXEC, mode);
}

/* The path of an open descriptor, if it lies under the watched folder. */
static int watched_path(int fd, char *path, size_t size) {
    const char *watch = watched();
    if (!watch || !shadow()) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, size - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t length = strlen(watch);
    return strncmp(path, watch, length) == 0 && (path[length] == 0 || path[length] == '/');
}

static unsigned long read_gen(dev_t dev, ino_t ino) {
    char path[PATH_MAX], text[32] = {0};
    snprintf(path, sizeof path, "%s/gen/%lu-%lu", shadow(), (unsigned long)dev, (unsigned long)ino);
    int fd = sys_open(AT_FDCWD, path, O_RDONLY, 0);
    if (fd < 0) {
        if (errno == ENOENT) return 0;
        die("cannot open", path);
    }
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n < 0) die("cannot read", path);
    return strtoul(text, NULL, 10);
}

static void key_of(const struct stat *st, char *key, size_t size) {
    snprintf(key, size, "%lu-%lu-%lu", (unsigned long)st->st_dev, (unsigned long)st->st_ino,
             read_gen(st->st_dev, st->st_ino));
}

/* A new temporary file in the shadow folder: its descriptor, and its name in ``tmp``. */
static int shadow_tmp(char *tmp, size_t size) {
    snprintf(tmp, size, "%s/tmp-%d-%lu", shadow(), (int)getpid(), ++tmp_counter);
    int fd = sys_open(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) die("cannot create", tmp);
    return fd;
}

static void write_all(int fd, const char *data, size_t size, const char *path) {
    while (size > 0) {
        ssize_t n = write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("cannot write", path);
        }
        data += n;
        size -= (size_t)n;
    }
}

static unsigned long flush_counter;

static void publish(const char *tmp, const char *kind, const char *key) {
    char target[PATH_MAX];
    snprintf(target, sizeof target, "%s/%s/%s", shadow(), kind, key);
    if (rename(tmp, target) != 0) die("cannot rename to", target);
    if (getenv("SNAPSTORE_POWERLOSS_HISTORY") && strcmp(kind, "gen") != 0) {  /* a flush, not a creation */
        char kept[PATH_MAX];
        snprintf(kept, sizeof kept, "%s/history/%020lu %s %s", shadow(), ++flush_counter, kind, key);
        if (link(target, kept) != 0) die("cannot link", kept);
    }
}

/* Called with the descriptor of a file or folder this process just created. */
static void note_created(int fd) {
    char path[PATH_MAX];
    if (!watched_path(fd, path, sizeof path)) return;
    struct stat st;
    if (fstat(fd, &st) != 0) die("cannot stat", path);
    pthread_mutex_lock(&shadow_lock);
    char tmp[PATH_MAX], text[32], name[64];
    int out = shadow_tmp(tmp, sizeof tmp);
    int n = snprintf(text, sizeof text, "%lu", read_gen(st.st_dev, st.st_ino) + 1);
    write_all(out, text, (size_t)n, tmp);
    close(out);
    snprintf(name, sizeof name, "%lu-%lu", (unsigned long)st.st_dev, (unsigned long)st.st_ino);
    publish(tmp, "gen", name);
    pthread_mutex_unlock(&shadow_lock);
}

typedef int (*openat_fn)(int, const char *, int, ...);

static openat_fn real_openat(void) {
    static openat_fn real;
    if (!real) real = (openat_fn)dlsym(RTLD_NEXT, "openat");
    return real;
}

static openat_fn real_openat64(void) {
    static openat_fn real;
    if (!real) real = (openat_fn)dlsym(RTLD_NEXT, "openat64");
    return real;
}

/* An open that may create: first with O_EXCL, which says exactly whether this call made the file. */
static int open_tracked(openat_fn real, int dirfd, const char *path, int flags, mode_t mode) {
    if (!(flags & O_CREAT) || !watched()) return real(dirfd, path, flags, mode);
    int fd = real(dirfd, path, flags | O_EXCL, mode);
    if (fd >= 0) {
        note_created(fd);
        return fd;
    }
    if (errno != EEXIST || (flags & O_EXCL)) return fd;
    return real(dirfd, path, flags, mode);
}

static mode_t mode_arg(int flags, va_list args) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(args, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    return open_tracked(real_openat(), AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    return open_tracked(real_openat64(), AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    return open_tracked(real_openat(), dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    return open_tracked(real_openat64(), dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode) {
    return open_tracked(real_openat(), AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

int creat64(const char *path, mode_t mode) {
    return open_tracked(real_openat64(), AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

static void note_made_folder(int dirfd, const char *path) {
    if (!watched()) return;
    int fd = sys_open(dirfd, path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
    if (fd < 0) return;  /* removed again already: nothing of it can be durable */
    note_created(fd);
    close(fd);
}

int mkdir(const char *path, mode_t mode) {
    static int (*real)(const char *, mode_t);
    if (!real) real = (int (*)(const char *, mode_t))dlsym(RTLD_NEXT, "mkdir");
    int rc = real(path, mode);
    if (rc == 0) {
        int saved = errno;
        note_made_folder(AT_FDCWD, path);
        errno = saved;
    }
    return rc;
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    static int (*real)(int, const char *, mode_t);
    if (!real) real = (int (*)(int, const char *, mode_t))dlsym(RTLD_NEXT, "mkdirat");
    int rc = real(dirfd, path, mode);
    if (rc == 0) {
        int saved = errno;
        note_made_folder(dirfd, path);
        errno = saved;
    }
    return rc;
}

/* A copy of a regular file's current bytes, in a shadow temporary file named in ``tmp``. */
static void copy_file(int fd, const char *path, char *tmp, size_t size) {
    int source = fd;
    if ((fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY) {
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        source = sys_open(AT_FDCWD, link, O_RDONLY, 0);
        if (source < 0) die("cannot reopen", path);
    }
    int out = shadow_tmp(tmp, size);
    static char buffer[1 << 20];
    off_t offset = 0;
    for (;;) {
        ssize_t n = pread(source, buffer, sizeof buffer, offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("cannot read", path);
        }
        if (n == 0) break;
        write_all(out, buffer, (size_t)n, tmp);
        offset += n;
    }
    close(out);
    if (source != fd) close(source);
}

/* The folder's current entries, in a shadow temporary file named in ``tmp``. */
static void list_folder(int fd, const char *path, char *tmp, size_t size) {
    int handle = sys_open(fd, ".", O_RDONLY | O_DIRECTORY, 0);
    if (handle < 0) die("cannot open", path);
    DIR *folder = fdopendir(handle);
    if (!folder) die("cannot list", path);
    int out = shadow_tmp(tmp, size);
    struct dirent *entry;
    while ((entry = readdir(folder)) != NULL) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        if (strchr(entry->d_name, '\n')) continue;  /* not expressible in the listing; never made here */
        struct stat st;
        if (fstatat(handle, entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  /* gone meanwhile */
        char kind;
        if (S_ISDIR(st.st_mode)) kind = 'd';
        else if (S_ISREG(st.st_mode)) kind = 'f';
        else continue;
        char key[96], line[NAME_MAX + 128];
        key_of(&st, key, sizeof key);
        int n = snprintf(line, sizeof line, "%c %s %s\n", kind, key, entry->d_name);
        write_all(out, line, (size_t)n, tmp);
    }
    closedir(folder);
    close(out);
}

/* fsync and fdatasync: sample the file or folder before the flush, publish the sample once it succeeded. */
static int flush_tracked(int fd, int (*real)(int)) {
    char path[PATH_MAX];
    if (!watched_path(fd, path, sizeof path)) return real(fd);
    struct stat st;
    if (fstat(fd, &st) != 0 || !(S_ISREG(st.st_mode) || S_ISDIR(st.st_mode))) return real(fd);
    pthread_mutex_lock(&shadow_lock);
    char tmp[PATH_MAX], key[96];
    key_of(&st, key, sizeof key);
    if (S_ISREG(st.st_mode)) copy_file(fd, path, tmp, sizeof tmp);
    else list_folder(fd, path, tmp, sizeof tmp);
    int rc = real(fd);
    int saved = errno;
    if (rc == 0) publish(tmp, S_ISREG(st.st_mode) ? "data" : "dir", key);
    else unlink(tmp);
    pthread_mutex_unlock(&shadow_lock);
    errno = saved;
    return rc;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return flush_tracked(fd, real);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return flush_tracked(fd, real);
}
