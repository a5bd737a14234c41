/* Time and CPU queries through glibc, which answers them from the vDSO
 * (clock_gettime, gettimeofday, time, getcpu, clock_getres), across
 * checkpoints and restarts. glibc resolved the vDSO's entry points at
 * start-up: after a restart they must still work wherever the kernel's
 * vDSO now is. Every step checks that the clocks are sane and never go
 * back (MONOTONIC, and REALTIME against the seconds of time()), and that
 * the CPU number is valid; stdout is the same for every correct run.
 *
 * A second thread does nothing but call the vDSO, so a checkpoint often
 * interrupts it there (a thread must never be left suspended inside the
 * vDSO's code, which is gone after a restart through the vDSO proxy).
 *
 * At the end the program writes vdso-report.txt (in its working directory,
 * outside stdout): what it finds at the address glibc resolved for
 * __vdso_clock_gettime at start-up, i.e. "in place" (the vDSO is where it
 * was), "trampoline" (a chain of jumps that ends in the current [vdso]),
 * "stub" (a system-call stub) or "unknown"; then "auxv current" if
 * getauxval(AT_SYSINFO_EHDR) names the running [vdso] (ELF headers
 * there), else "auxv stale". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/sysinfo.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile int done;

static int before(const struct timespec *a, const struct timespec *b) {
  return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

static void *spinner(void *arg) {
  (void)arg;
  long bad = 0;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  while (!done) {
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (before(&b, &a)) bad++;
    a = b;
    if (time(NULL) <= 0) bad++;
  }
  return (void *)bad;
}

/* The current [vdso] mapping. */
static int vdso_range(uintptr_t *lo, uintptr_t *hi) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  int found = 0;
  while (f && fgets(line, sizeof line, f)) {
    if (strstr(line, "[vdso]") && sscanf(line, "%lx-%lx", lo, hi) == 2) found = 1;
  }
  if (f) fclose(f);
  return found;
}

static const char *report(uintptr_t base, const unsigned char *cg) {
  uintptr_t lo = 0, hi = 0;
  if (!cg || !vdso_range(&lo, &hi)) return "unknown";
  if (lo == base) return "in place";
  const unsigned char *p = cg;
  for (int hops = 0; hops < 4; hops++) {
    if ((uintptr_t)p >= lo && (uintptr_t)p < hi) return hops ? "trampoline" : "unknown";
    if (p[0] == 0x48 && p[1] == 0xb8 && p[10] == 0xff && p[11] == 0xe0) {
      uint64_t t;
      memcpy(&t, p + 2, 8);
      p = (const unsigned char *)(uintptr_t)t;
    } else if (p[0] == 0xe9) {
      int32_t rel;
      memcpy(&rel, p + 1, 4);
      p = p + 5 + rel;
    } else if (p[0] == 0xb8 && p[5] == 0x0f && p[6] == 0x05 && p[7] == 0xc3) {
      return "stub";
    } else {
      return "unknown";
    }
  }
  return "unknown";
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int steps = argc > 1 ? atoi(argv[1]) : 60;
  uintptr_t base = getauxval(AT_SYSINFO_EHDR);
  void *h = dlopen("linux-vdso.so.1", RTLD_NOLOAD | RTLD_LAZY);
  const unsigned char *cg = h ? dlsym(h, "__vdso_clock_gettime") : NULL;
  printf("vdso found: %s\n", base && cg ? "yes" : "no");
  int ncpu = get_nprocs_conf();
  pthread_t t;
  pthread_create(&t, NULL, spinner, NULL);
  struct timespec mono_last = {0, 0}, real_last = {0, 0};
  long bad_mono = 0, bad_real = 0, bad_tod = 0, bad_time = 0, bad_cpu = 0, bad_res = 0;
  for (int i = 0; i < steps; i++) {
    for (int k = 0; k < 2000; k++) {
      struct timespec m, r, r2, res;
      struct timeval tv;
      clock_gettime(CLOCK_MONOTONIC, &m);
      if (before(&m, &mono_last)) bad_mono++;
      mono_last = m;
      time_t t0 = time(NULL);
      clock_gettime(CLOCK_REALTIME, &r);
      gettimeofday(&tv, NULL);
      clock_gettime(CLOCK_REALTIME, &r2);
      time_t t1 = time(NULL);
      if (before(&r, &real_last) || before(&r2, &r)) bad_real++;
      real_last = r2;
      /* gettimeofday lies between the two REALTIME reads (microseconds). */
      long long us = (long long)tv.tv_sec * 1000000 + tv.tv_usec;
      if (us < (long long)r.tv_sec * 1000000 + r.tv_nsec / 1000 || us > (long long)r2.tv_sec * 1000000 + r2.tv_nsec / 1000 + 1)
        bad_tod++;
      /* time() reads the coarse clock: it may trail by a tick, never lead. */
      if (t0 > r.tv_sec || t1 > r2.tv_sec || t1 < r.tv_sec - 1) bad_time++;
      unsigned cpu = 0, node = 0;
      if (getcpu(&cpu, &node) != 0 || (int)cpu >= ncpu) bad_cpu++;
      if (clock_getres(CLOCK_MONOTONIC, &res) != 0 || res.tv_sec != 0 || res.tv_nsec <= 0) bad_res++;
    }
    printf("step %d %s\n", i, bad_mono + bad_real + bad_tod + bad_time + bad_cpu + bad_res ? "BAD" : "ok");
    usleep(30000);
  }
  done = 1;
  void *spin_bad;
  pthread_join(t, &spin_bad);
  FILE *f = fopen("vdso-report.txt", "w");
  if (f) {
    fprintf(f, "%s\n", report(base, cg));
    /* What getauxval says now: the running [vdso], whose ELF headers are
     * there, or a stale address (a proxy or nothing). */
    uintptr_t now = getauxval(AT_SYSINFO_EHDR), lo = 0, hi = 0;
    int cur = vdso_range(&lo, &hi) && now == lo && memcmp((const void *)now, "\177ELF", 4) == 0;
    fprintf(f, "auxv %s\n", cur ? "current" : "stale");
    fclose(f);
  }
  printf("RESULT monotonic %ld realtime %ld gettimeofday %ld time %ld getcpu %ld getres %ld spinner %ld\n", bad_mono, bad_real,
         bad_tod, bad_time, bad_cpu, bad_res, (long)spin_bad);
  return 0;
}
