/*
 * A slow disk for benchmarks, by LD_PRELOAD: every fsync() and fdatasync() of the process (here:
 * the benchmark's PostgreSQL server) returns only after the real call plus a delay of
 * KICK_SLOW_FSYNC_US microseconds (default 3000) and an exponentially distributed extra with the
 * mean KICK_SLOW_FSYNC_TAIL_US (default 1000). The defaults give a durable one-row commit of
 * about 4 ms at the median and 8 ms at the 99th percentile: the disk kick-monitor's latency
 * issue was measured on, on a machine whose own disk flushes in 0.2 ms.
 *
 * The delay is a sleep: like a real flush, it holds whatever the caller holds (PostgreSQL's
 * WAL write lock) and leaves the CPU to others. Writes, reads and sync_file_range() are untouched.
 *
 * A hanging disk, besides: with KICK_SLOW_FSYNC_HANG_MS (default 0: never) and
 * KICK_SLOW_FSYNC_HANG_EVERY_MS (default 5000), the disk hangs for HANG_MS at the start of every
 * HANG_EVERY_MS of the wall clock: a flush called in that window returns only when the window
 * ends (then the delay above), in every process at once, as when a real device or the host under
 * a virtual one stops answering for a while (this machine's own disk was seen to: a 4 KB
 * fdatasync took up to 1.2 s).
 *
 * Build: cc -O2 -shared -fPIC -o slow-fsync.so slow-fsync.c -ldl -lm
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long setting(const char *name, long fallback)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0')
        return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    /* Absurd values fall back rather than stall the server: at most 1 s. */
    if (*end != '\0' || v < 0 || v > 1000000)
        return fallback;
    return v;
}

/* xorshift64*: per process, seeded from the clock and the pid; no shared state, no locks. */
static double uniform(void)
{
    static __thread uint64_t x;
    if (x == 0) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        x = ((uint64_t)t.tv_nsec << 20) ^ (uint64_t)t.tv_sec ^ ((uint64_t)getpid() << 40) ^ 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return ((x * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0);
}

/* Waits out the disk's hang window, if one is open now (the same windows in every process). */
static void hang(void)
{
    static long hang_ms = -1, every_ms = -1;
    if (hang_ms < 0) {
        hang_ms = setting("KICK_SLOW_FSYNC_HANG_MS", 0);
        every_ms = setting("KICK_SLOW_FSYNC_HANG_EVERY_MS", 5000);
        if (every_ms <= hang_ms)
            hang_ms = 0;
    }
    if (hang_ms == 0)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    long into = (long)(ms % every_ms);
    if (into >= hang_ms)
        return;
    long us = (hang_ms - into) * 1000L;
    struct timespec d = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&d, &d) == -1 && errno == EINTR)
        ;
}

static void slow_down(void)
{
    static long base = -1, tail = -1;
    hang();
    if (base < 0) {
        base = setting("KICK_SLOW_FSYNC_US", 3000);
        tail = setting("KICK_SLOW_FSYNC_TAIL_US", 1000);
    }
    double extra = tail > 0 ? -log(1.0 - uniform()) * (double)tail : 0.0;
    long us = base + (long)extra;
    if (us > 1000000)
        us = 1000000;
    struct timespec d = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&d, &d) == -1 && errno == EINTR)
        ;
}

/* The real call, then the delay: the data is as safe as before, only later. */
#define SLOW(name)                                                  \
    int name(int fd)                                                \
    {                                                               \
        static int (*real)(int);                                    \
        if (real == NULL)                                           \
            real = (int (*)(int))dlsym(RTLD_NEXT, #name);           \
        int r = real(fd);                                           \
        slow_down();                                                \
        return r;                                                   \
    }

SLOW(fsync)
SLOW(fdatasync)
