/* gen LABEL BYTES GATE: writes BYTES pseudo-random bytes (a fixed
 * xorshift sequence) to stdout. Half-way it prints "LABEL half" on fd 3
 * and waits until the file GATE exists; at the end "LABEL sent". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void say(const char *label, const char *what) {
  char b[256];
  int n = snprintf(b, sizeof b, "%s %s\n", label, what);
  if (write(3, b, n) != n) exit(3);
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  const char *label = argv[1];
  long long total = atoll(argv[2]);
  const char *gate = argv[3];
  static uint64_t buf[8192];
  uint64_t x = 0x9e3779b97f4a7c15ULL;
  long long sent = 0;
  int gated = 0;
  while (sent < total) {
    if (!gated && sent >= total / 2) {
      say(label, "half");
      struct timespec t = {0, 10000000};
      while (access(gate, F_OK) != 0) nanosleep(&t, NULL);
      gated = 1;
    }
    for (int i = 0; i < 8192; i++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      buf[i] = x;
    }
    long long n = sizeof buf;
    if (n > total - sent) n = total - sent;
    const char *p = (const char *)buf;
    long long left = n;
    while (left > 0) {
      ssize_t w = write(1, p, left);
      if (w <= 0) return 1;
      p += w; left -= w;
    }
    sent += n;
  }
  say(label, "sent");
  return 0;
}
