/* Guest clocks for tests/test_guest_clock.py. */
#include <aionub_guest.h>
#include <time.h>

static int64_t ns(clockid_t clock) {
    struct timespec ts;
    if (clock_gettime(clock, &ts) != 0)
        return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* mono() > 0 */
static int64_t mono(void) { return ns(CLOCK_MONOTONIC); }
AB_EXPORT(mono, AB_INT);

static int64_t real(void) { return ns(CLOCK_REALTIME); }
AB_EXPORT(real, AB_INT);

static int64_t cpu(void) { return ns(CLOCK_THREAD_CPUTIME_ID); }
AB_EXPORT(cpu, AB_INT);

/* Reads the monotonic clock until `span` ns have passed on it; returns the
 * number of reads, or -1 if a read went back. */
static int64_t read_for(int64_t span) {
    int64_t start = mono(), prev = start, reads = 0;
    for (;;) {
        int64_t now = mono();
        reads++;
        if (now < prev)
            return -1;
        prev = now;
        if (now - start >= span)
            return reads;
    }
}
AB_EXPORT(read_for, AB_INT, AB_INT);
