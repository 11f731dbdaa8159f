/* The workload the real-kernel reference runs inside the QEMU guest (record.sh):
 * map REGION_MIB of anonymous memory, touch every page, hold it, unmap it, then
 * idle while free page reporting hands it back. "thp" asks for transparent huge
 * pages (order-9 folios, freed whole onto the per-CPU THP list in 6.1); "small"
 * forbids them (order-0 pages, freed through the per-CPU order-0 lists).
 * Each step prints one line the host's sampler reads from the serial console. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Each CPU's per-CPU list count in each zone (/proc/zoneinfo's "count:"), on one
 * line: where a long free ends on the list depends on the count it began with
 * (nr_pcp_free's drains), and which CPU runs the free is the scheduler's choice. */
static void pcp_counts(const char *when) {
    static char buf[1 << 16];
    FILE *f = fopen("/proc/zoneinfo", "r");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    printf("PAGEHINT-PCP %s", when);
    for (char *p = buf; (p = strstr(p, "count: ")); p += 7) printf(" %ld", atol(p + 7));
    printf("\n");
    fflush(stdout);
}

/* "workload kpageflags": every pfn's state from /proc/kpageflags, as runs on
 * lines "PAGEHINT-KPF KIND START END" (hex, half-open): B free in the buddy
 * (KPF_BUDDY, set on every page of a free block), R reserved (KPF_RESERVED), N no
 * page (KPF_NOPAGE), O anything else (allocated, or free on a per-CPU list).
 * record.py --boot-map reads it against QEMU's page map: which free pages the
 * boot wrote (the host holds them). */
static int kpageflags(void) {
    static unsigned long long v[1 << 16];
    unsigned long long pfn = 0, start = 0;
    char cur = 0;
    size_t n;
    FILE *f = fopen("/proc/kpageflags", "rb");
    if (!f) { perror("kpageflags"); return 1; }
    while ((n = fread(v, 8, 1 << 16, f)) > 0) {
        for (size_t i = 0; i < n; i++, pfn++) {
            char k = (v[i] >> 20 & 1) ? 'N' : (v[i] >> 10 & 1) ? 'B' : (v[i] >> 32 & 1) ? 'R' : 'O';
            if (k != cur) {
                if (cur) printf("PAGEHINT-KPF %c %llx %llx\n", cur, start, pfn);
                cur = k;
                start = pfn;
            }
        }
    }
    if (cur) printf("PAGEHINT-KPF %c %llx %llx\n", cur, start, pfn);
    fclose(f);
    fflush(stdout);
    return 0;
}

/* --trace-drains: tracing on for the munmap alone (init.sh set the events up). */
static void tracing(const char *on) {
    if (!getenv("PAGEHINT_TRACE_FREE")) return;
    FILE *t = fopen("/sys/kernel/tracing/tracing_on", "w");
    if (t) { fputs(on, t); fclose(t); }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "kpageflags") == 0) return kpageflags();
    if (argc != 5) {
        fprintf(stderr, "usage: workload thp|small REGION_MIB HOLD_S IDLE_S | workload kpageflags\n");
        return 2;
    }
    int thp = strcmp(argv[1], "thp") == 0;
    size_t len = (size_t)atol(argv[2]) << 20;
    int hold = atoi(argv[3]), idle = atoi(argv[4]);
    /* 2 MiB-aligned, so every THP of the region is a whole pmd */
    size_t pad = 2 << 20;
    char *raw = mmap(NULL, len + pad, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) { perror("mmap"); return 1; }
    char *p = (char *)(((unsigned long)raw + pad - 1) & ~(pad - 1));
    if (madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)) { perror("madvise"); return 1; }
    for (size_t i = 0; i < len; i += 4096) p[i] = 1;
    printf("PAGEHINT-MARK touched %.3f\n", now()); fflush(stdout);
    sleep(hold);
    pcp_counts("before");
    printf("PAGEHINT-MARK freeing %.3f\n", now()); fflush(stdout);
    tracing("1");
    munmap(raw, len + pad);
    tracing("0");
    printf("PAGEHINT-MARK freed %.3f\n", now()); fflush(stdout);
    pcp_counts("after");
    sleep(idle);
    printf("PAGEHINT-MARK done %.3f\n", now()); fflush(stdout);
    return 0;
}
