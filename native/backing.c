/* The shared backing of a snapshot: a sealed memfd holding its memory image
 * (pages it does not hold are holes, read as zero and costing nothing),
 * which every sandbox spawned from the snapshot maps MAP_PRIVATE as its
 * guest memory. A page a sandbox never writes stays one page of the page
 * cache for all of them; its first write gives that sandbox a private copy
 * (copy-on-write, by the host kernel, also for writes the guest makes
 * through KVM).
 *
 * Sealing (no write, grow or shrink, no more seals) makes the image
 * immutable for as long as any mapping of it exists, so no sandbox can
 * ever see another's writes or a change to the snapshot.
 *
 * Once the backing exists, the snapshot's own copy (`mem`) is replaced,
 * at the same address, by a read-only view of the backing: the image is
 * held once. The replacement is one mmap(MAP_FIXED), atomic for anyone
 * reading `mem` at that moment (a restore from this snapshot on another
 * sandbox's vCPU thread): every page reads the same before and after.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE AB_PAGE_SIZE
#define SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL)

/* Serialises the creation of backings (spawns may come from several
 * threads' event loops). */
static pthread_mutex_t backing_lock = PTHREAD_MUTEX_INITIALIZER;

int backing_create(uint64_t size, int *out_fd)
{
    int fd = memfd_create("aionub-snapshot", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    *out_fd = fd;
    return 0;
}

/* Write `len` bytes at `off`, whole (pwrite may write less). */
int backing_write(int fd, const uint8_t *data, uint64_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, data, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        data += n;
        len -= (uint64_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

int backing_seal_and_view(struct ab_snapshot *s, int fd)
{
    if (fcntl(fd, F_ADD_SEALS, SEALS) < 0)
        return -errno;
    void *addr = s->mem ? (void *)s->mem : NULL;
    int flags = MAP_SHARED | MAP_NORESERVE | (addr ? MAP_FIXED : 0);
    void *view = mmap(addr, s->layout.memory_size, PROT_READ, flags, fd, 0);
    if (view == MAP_FAILED)
        return -errno;
    s->mem = view;
    s->backing_fd = fd;
    return 0;
}

int snapshot_share(struct ab_snapshot *s)
{
    pthread_mutex_lock(&backing_lock);
    int rc = 0;
    if (s->backing_fd >= 0)
        goto out;
    int fd = -1;
    rc = backing_create(s->layout.memory_size, &fd);
    if (rc)
        goto out;
    /* Runs of held pages, one pwrite each. */
    for (uint64_t p = 0; p < s->npages && rc == 0;) {
        if (!test_bit(s->present, p)) {
            p++;
            continue;
        }
        uint64_t first = p;
        while (p < s->npages && test_bit(s->present, p))
            p++;
        rc = backing_write(fd, s->mem + first * PAGE, (p - first) * PAGE,
                           first * PAGE);
    }
    if (rc == 0)
        rc = backing_seal_and_view(s, fd);
    if (rc)
        close(fd);
out:
    pthread_mutex_unlock(&backing_lock);
    return rc;
}
