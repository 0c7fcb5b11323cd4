/*
 * File descriptors for musl: stdin, stdout and stderr, and the read-only
 * files the host provides (Sandbox.create(files=...)).
 *
 *   fd 0  reads the run's stdin from the host (AB_SYS_READ; EOF in calls)
 *   fd 1  writes to the host (AB_SYS_WRITE): a run's stdout, else log records
 *   fd 2  the same for stderr
 *   3...  host files, opened read-only; the host is asked for their size at
 *         open (AB_SYS_STAT) and for their bytes at each read (AB_SYS_PREAD)
 *
 * The file system is the host's mapping of absolute paths to contents, and
 * nothing else: the working directory is "/", relative paths are resolved
 * against it (the host normalises "." and ".."), there are no directories
 * to list, and anything that would write to it fails with EROFS.
 *
 * Descriptors point to open file descriptions, which dup() shares, with
 * the offset, as POSIX says.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 256

enum kind { K_FREE, K_STDIN, K_STDOUT, K_STDERR, K_FILE };

struct description {
    enum kind kind;
    unsigned refs;
    char *path; /* K_FILE: absolute, on the heap */
    uint64_t size;
    uint64_t pos;
};

struct fd {
    struct description *d;
    bool cloexec;
};

static struct description std_descriptions[3] = {
    {K_STDIN, 1, NULL, 0, 0},
    {K_STDOUT, 1, NULL, 0, 0},
    {K_STDERR, 1, NULL, 0, 0},
};
/* In .bss, not .data: fds 0-2 are set up on first use (a 4 KiB table of
 * initialised data would be one more image page to load at every start). */
static struct fd fds[MAX_FDS];
static bool fds_ready;

static void set_up_std_fds(void) {
    for (int i = 0; i < 3; i++)
        fds[i] = (struct fd){&std_descriptions[i], false};
    fds_ready = true;
}

static struct description *get(long fd) {
    return fd >= 0 && fd < MAX_FDS ? fds[fd].d : NULL;
}

static long new_fd(long lowest, struct description *d, bool cloexec) {
    for (long fd = lowest < 0 ? 0 : lowest; fd < MAX_FDS; fd++) {
        if (!fds[fd].d) {
            fds[fd] = (struct fd){d, cloexec};
            d->refs++;
            return fd;
        }
    }
    return -EMFILE;
}

static void release(long fd) {
    struct description *d = fds[fd].d;
    fds[fd].d = NULL;
    if (--d->refs == 0 && d->kind == K_FILE) {
        free(d->path);
        free(d);
    }
}

/* ---- paths ------------------------------------------------------------------------ */

/* The absolute form of `path` (relative to "/") in buf[PATH_MAX]. */
static long absolute(long dirfd, const char *path, char *buf) {
    if (!path)
        return -EFAULT;
    if (!*path)
        return -ENOENT;
    if (path[0] != '/' && dirfd != AT_FDCWD)
        return get(dirfd) ? -ENOTDIR : -EBADF; /* no descriptor is a directory */
    size_t len = strnlen(path, PATH_MAX);
    size_t off = path[0] == '/' ? 0 : 1;
    if (len + off >= PATH_MAX)
        return -ENAMETOOLONG;
    buf[0] = '/';
    memcpy(buf + off, path, len + 1);
    return 0;
}

/* Asks the host for the size of the file at an absolute path. */
static long host_stat(const char *path, uint64_t *size) {
    size_t len = strlen(path);
    if (len + 4 + 5 > ab__out_size)
        return -ENAMETOOLONG;
    ab__writer w = ab__sys_begin(AB_SYS_STAT);
    ab__put_lstr(&w, path, len);
    int64_t r = ab__sys_call(&w);
    if (r == 0)
        memcpy(size, ab__sys_data(), 8);
    return (long)r;
}

static void fill_stat(struct stat *st, mode_t mode, uint64_t size, long ino) {
    memset(st, 0, sizeof *st);
    st->st_dev = 1;
    st->st_ino = (ino_t)ino;
    st->st_nlink = 1;
    st->st_mode = mode;
    st->st_size = (off_t)size;
    st->st_blksize = 4096;
    st->st_blocks = (blkcnt_t)((size + 511) / 512);
}

static long stat_path(long dirfd, const char *path, struct stat *st) {
    char abs[PATH_MAX];
    long r = absolute(dirfd, path, abs);
    uint64_t size = 0;
    if (r == 0)
        r = host_stat(abs, &size);
    if (r == 0)
        fill_stat(st, S_IFREG | 0444, size, 0);
    return r;
}

static long stat_fd(long fd, struct stat *st) {
    struct description *d = get(fd);
    if (!d)
        return -EBADF;
    if (d->kind == K_FILE)
        fill_stat(st, S_IFREG | 0444, d->size, fd);
    else
        fill_stat(st, S_IFIFO | 0600, 0, fd); /* like a pipe: not a terminal */
    return 0;
}

static long open_path(long dirfd, const char *path, long flags) {
    char abs[PATH_MAX];
    long r = absolute(dirfd, path, abs);
    if (r)
        return r;
    uint64_t size = 0;
    r = host_stat(abs, &size);
    if (r == -ENOENT && (flags & O_CREAT))
        return -EROFS;
    if (r)
        return r;
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
        return -EROFS;
    if ((flags & O_CREAT) && (flags & O_EXCL))
        return -EEXIST;
    if (flags & O_DIRECTORY)
        return -ENOTDIR;
    struct description *d = malloc(sizeof *d);
    char *copy = d ? strdup(abs) : NULL;
    if (!copy) {
        free(d);
        return -ENOMEM;
    }
    *d = (struct description){K_FILE, 0, copy, size, 0};
    long fd = new_fd(0, d, (flags & O_CLOEXEC) != 0);
    if (fd < 0) {
        free(copy);
        free(d);
    }
    return fd;
}

/* ---- reading and writing ------------------------------------------------------------- */

static long write_std(enum kind kind, const char *buf, size_t len) {
    size_t room = ab__out_size > 12 ? ab__out_size - 12 : 0;
    if (!room)
        return -EIO;
    size_t done = 0;
    while (done < len) {
        size_t n = len - done < room ? len - done : room;
        ab__writer w = ab__sys_begin(AB_SYS_WRITE);
        ab__put_u32(&w, kind == K_STDOUT ? 1 : 2);
        ab__put_u32(&w, (uint32_t)n);
        ab__put(&w, buf + done, n);
        int64_t r = ab__sys_call(&w);
        if (r < 0)
            return done ? (long)done : (long)r;
        done += n;
    }
    return (long)done;
}

static long read_stdin(char *buf, size_t len) {
    size_t n = len < ab__sys_room() ? len : ab__sys_room();
    if (n > UINT32_MAX)
        n = UINT32_MAX;
    ab__writer w = ab__sys_begin(AB_SYS_READ);
    ab__put_u32(&w, (uint32_t)n);
    int64_t r = ab__sys_call(&w);
    if (r < 0)
        return (long)r;
    if ((uint64_t)r > n)
        return -EIO;
    memcpy(buf, ab__sys_data(), (size_t)r);
    return (long)r;
}

/* Reads from a host file at `pos` until `len` bytes or the end. */
static long read_file(struct description *d, char *buf, size_t len, uint64_t pos) {
    size_t path_len = strlen(d->path);
    if (ab__out_size < 4 + 8 + 4 + 4 + path_len + 1)
        return -EIO;
    size_t done = 0;
    while (done < len) {
        size_t n = len - done < ab__sys_room() ? len - done : ab__sys_room();
        if (n > UINT32_MAX)
            n = UINT32_MAX;
        ab__writer w = ab__sys_begin(AB_SYS_PREAD);
        ab__put_u64(&w, pos + done);
        ab__put_u32(&w, (uint32_t)n);
        ab__put_lstr(&w, d->path, path_len);
        int64_t r = ab__sys_call(&w);
        if (r < 0)
            return done ? (long)done : (long)r;
        if ((uint64_t)r > n)
            return -EIO;
        memcpy(buf + done, ab__sys_data(), (size_t)r);
        done += (size_t)r;
        if ((size_t)r < n)
            break; /* end of file */
    }
    return (long)done;
}

static long do_read(long fd, void *buf, size_t len, const uint64_t *at) {
    struct description *d = get(fd);
    if (!d)
        return -EBADF;
    if (!len)
        return 0;
    switch (d->kind) {
    case K_STDIN:
        return at ? -ESPIPE : read_stdin(buf, len);
    case K_FILE: {
        long r = read_file(d, buf, len, at ? *at : d->pos);
        if (r > 0 && !at)
            d->pos += (uint64_t)r;
        return r;
    }
    default:
        return -EBADF; /* not open for reading */
    }
}

static long do_write(long fd, const void *buf, size_t len, bool positioned) {
    struct description *d = get(fd);
    if (!d)
        return -EBADF;
    if (d->kind == K_STDOUT || d->kind == K_STDERR) {
        if (positioned)
            return -ESPIPE;
        return len ? write_std(d->kind, buf, len) : 0;
    }
    return -EBADF; /* stdin and host files are read-only */
}

static long do_readv(long fd, const struct iovec *iov, long cnt, const uint64_t *at) {
    if (cnt < 0 || cnt > IOV_MAX)
        return -EINVAL;
    uint64_t pos = at ? *at : 0;
    long total = 0;
    for (long i = 0; i < cnt; i++) {
        if (!iov[i].iov_len)
            continue;
        long r = do_read(fd, iov[i].iov_base, iov[i].iov_len, at ? &pos : NULL);
        if (r < 0)
            return total ? total : r;
        total += r;
        pos += (uint64_t)r;
        if ((size_t)r < iov[i].iov_len)
            break;
    }
    return total;
}

static long do_writev(long fd, const struct iovec *iov, long cnt) {
    if (cnt < 0 || cnt > IOV_MAX)
        return -EINVAL;
    long total = 0;
    for (long i = 0; i < cnt; i++) {
        long r = do_write(fd, iov[i].iov_base, iov[i].iov_len, false);
        if (r < 0)
            return total ? total : r;
        total += r;
    }
    return total;
}

static long do_lseek(long fd, long off, long whence) {
    struct description *d = get(fd);
    if (!d)
        return -EBADF;
    if (d->kind != K_FILE)
        return -ESPIPE;
    int64_t base = whence == SEEK_SET   ? 0
                   : whence == SEEK_CUR ? (int64_t)d->pos
                   : whence == SEEK_END ? (int64_t)d->size
                                        : -1;
    if (base < 0)
        return -EINVAL;
    if ((off > 0 && base > INT64_MAX - off) || base + off < 0)
        return -EINVAL;
    d->pos = (uint64_t)(base + off);
    return (long)d->pos;
}

static long do_fcntl(long fd, long cmd, long arg) {
    struct description *d = get(fd);
    if (!d)
        return -EBADF;
    switch (cmd) {
    case F_GETFD:
        return fds[fd].cloexec ? FD_CLOEXEC : 0;
    case F_SETFD:
        fds[fd].cloexec = (arg & FD_CLOEXEC) != 0;
        return 0;
    case F_GETFL:
        return d->kind == K_STDOUT || d->kind == K_STDERR ? O_WRONLY : O_RDONLY;
    case F_SETFL:
        return 0;
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
        if (arg < 0 || arg >= MAX_FDS)
            return -EINVAL;
        return new_fd(arg, d, cmd == F_DUPFD_CLOEXEC);
    default:
        return -EINVAL;
    }
}

static long do_dup3(long oldfd, long newfd, long flags, bool dup2) {
    struct description *d = get(oldfd);
    if (!d || newfd < 0 || newfd >= MAX_FDS)
        return -EBADF;
    if (oldfd == newfd)
        return dup2 ? newfd : -EINVAL;
    if (flags & ~O_CLOEXEC)
        return -EINVAL;
    if (fds[newfd].d)
        release(newfd);
    fds[newfd] = (struct fd){d, (flags & O_CLOEXEC) != 0};
    d->refs++;
    return newfd;
}

static long do_access(long dirfd, const char *path, long mode) {
    struct stat st;
    long r = stat_path(dirfd, path, &st);
    if (r)
        return r;
    if (mode & W_OK)
        return -EROFS;
    if (mode & X_OK)
        return -EACCES;
    return 0;
}

static long do_getcwd(char *buf, size_t size) {
    if (size < 2)
        return -ERANGE;
    memcpy(buf, "/", 2);
    return 2; /* the kernel returns the length with the NUL */
}

long ab__file_syscall(long n, long a1, long a2, long a3, long a4, long a5, long a6, bool *handled) {
    (void)a5;
    (void)a6;
    if (!fds_ready)
        set_up_std_fds();
    *handled = true;
    switch (n) {
    case SYS_read:
        return do_read(a1, (void *)a2, (size_t)a3, NULL);
    case SYS_pread64: {
        if (a4 < 0)
            return -EINVAL;
        uint64_t at = (uint64_t)a4;
        return do_read(a1, (void *)a2, (size_t)a3, &at);
    }
    case SYS_readv:
        return do_readv(a1, (const struct iovec *)a2, a3, NULL);
    case SYS_preadv: {
        if (a4 < 0)
            return -EINVAL;
        uint64_t at = (uint64_t)a4;
        return do_readv(a1, (const struct iovec *)a2, a3, &at);
    }
    case SYS_write:
        return do_write(a1, (const void *)a2, (size_t)a3, false);
    case SYS_pwrite64:
        return do_write(a1, (const void *)a2, (size_t)a3, true);
    case SYS_writev:
        return do_writev(a1, (const struct iovec *)a2, a3);
    case SYS_open:
        return open_path(AT_FDCWD, (const char *)a1, a2);
    case SYS_openat:
        return open_path(a1, (const char *)a2, a3);
    case SYS_creat:
        return -EROFS;
    case SYS_close:
        if (!get(a1))
            return -EBADF;
        release(a1);
        return 0;
    case SYS_lseek:
        return do_lseek(a1, a2, a3);
    case SYS_fstat:
        return stat_fd(a1, (struct stat *)a2);
    case SYS_stat:
    case SYS_lstat:
        return stat_path(AT_FDCWD, (const char *)a1, (struct stat *)a2);
    case SYS_newfstatat:
        if ((a4 & AT_EMPTY_PATH) && a2 && !*(const char *)a2)
            return stat_fd(a1, (struct stat *)a3);
        return stat_path(a1, (const char *)a2, (struct stat *)a3);
    case SYS_access:
        return do_access(AT_FDCWD, (const char *)a1, a2);
    case SYS_faccessat:
    case SYS_faccessat2:
        return do_access(a1, (const char *)a2, a3);
    case SYS_dup:
        return get(a1) ? new_fd(0, get(a1), false) : -EBADF;
    case SYS_dup2:
        return do_dup3(a1, a2, 0, true);
    case SYS_dup3:
        return do_dup3(a1, a2, a3, false);
    case SYS_fcntl:
        return do_fcntl(a1, a2, a3);
    case SYS_ioctl:
        return get(a1) ? -ENOTTY : -EBADF; /* TIOCGWINSZ included: no terminal */
    case SYS_fsync:
    case SYS_fdatasync:
        return get(a1) ? 0 : -EBADF;
    case SYS_ftruncate:
        return get(a1) ? -EINVAL : -EBADF;
    case SYS_getdents64:
        return get(a1) ? -ENOTDIR : -EBADF;
    case SYS_getcwd:
        return do_getcwd((char *)a1, (size_t)a2);
    case SYS_chdir: {
        const char *p = (const char *)a1;
        return p && p[0] == '/' && !p[1] ? 0 : -ENOENT;
    }
    case SYS_readlink:
    case SYS_readlinkat:
        return -ENOENT;
    case SYS_truncate:
    case SYS_mkdir:
    case SYS_mkdirat:
    case SYS_rmdir:
    case SYS_unlink:
    case SYS_unlinkat:
    case SYS_rename:
    case SYS_renameat:
    case SYS_renameat2:
    case SYS_link:
    case SYS_linkat:
    case SYS_symlink:
    case SYS_symlinkat:
    case SYS_chmod:
    case SYS_fchmod:
    case SYS_fchmodat:
    case SYS_chown:
    case SYS_fchown:
    case SYS_lchown:
    case SYS_fchownat:
    case SYS_mknod:
    case SYS_mknodat:
    case SYS_utimensat:
        return -EROFS;
    default:
        *handled = false;
        return -ENOSYS;
    }
}
