/*
 * Two programs exchanging Ethernet frames over tap devices on a bridge,
 * for the tun plugin's tests.
 *
 *   tap_echo NAME send|echo
 *
 * Each creates tap device NAME (IFF_TAP | IFF_NO_PI), sets the device's
 * hardware address (fe:00:00:00:00:01 for the sender, :02 for the echo;
 * as for a virtual machine, the host side's address differs from the
 * program's own, 02:00:00:00:00:01 or :02, which the bridge learns),
 * brings it up and prints "ready NAME"; the test puts both devices on a
 * bridge.
 * Frames are of the local experimental ethertype 0x88b5 and carry a
 * sequence number.
 *
 * The sender sends frame N to the echo's address and waits up to 20 ms for
 * its echo, sending it again otherwise (a frame lost in flight); it goes
 * on with N+1 once N came back. It prints "acked N retries R" now and
 * then, and "final acked N retries R" when the file "stop" appears.
 *
 * The echo sends every frame back to its source. A frame that is neither
 * the last one again nor the next one is an error line (the sender never
 * skips a number). It prints "echoed E distinct D" now and then, and its
 * final line when "stop" appears.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ETHERTYPE 0x88b5

static void die(const char *what) {
  printf("ERROR %s: %s\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static const uint8_t MAC_SEND[6] = {2, 0, 0, 0, 0, 1};
static const uint8_t MAC_ECHO[6] = {2, 0, 0, 0, 0, 2};
static const uint8_t TAP_SEND[6] = {0xfe, 0, 0, 0, 0, 1};
static const uint8_t TAP_ECHO[6] = {0xfe, 0, 0, 0, 0, 2};

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: tap_echo NAME send|echo\n");
    return 2;
  }
  const char *name = argv[1];
  int sender = !strcmp(argv[2], "send");
  int fd = open("/dev/net/tun", O_RDWR);
  if (fd < 0) die("open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) die("socket");
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  memcpy(ifr.ifr_hwaddr.sa_data, sender ? TAP_SEND : TAP_ECHO, 6);
  if (ioctl(s, SIOCSIFHWADDR, &ifr) < 0) die("SIOCSIFHWADDR");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS");
  ifr.ifr_flags |= IFF_UP;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS");
  printf("ready %s\n", name);
  fflush(stdout);

  uint8_t f[64], b[2048];
  long n = 0, retries = 0, echoed = 0, distinct = 0, last = -1, errors = 0;
  double sent_at = 0, report = now();
  int waiting = 0;
  for (;;) {
    if (now() >= report) {
      report += 0.1;
      if (sender)
        printf("acked %ld retries %ld\n", n, retries);
      else
        printf("echoed %ld distinct %ld\n", echoed, distinct);
      fflush(stdout);
      if (access("stop", F_OK) == 0) break;
    }
    if (sender && (!waiting || now() - sent_at > 0.02)) {
      if (waiting) retries++;
      memset(f, 0, sizeof f);
      memcpy(f, MAC_ECHO, 6);
      memcpy(f + 6, MAC_SEND, 6);
      f[12] = ETHERTYPE >> 8;
      f[13] = ETHERTYPE & 0xff;
      memcpy(f + 14, &n, sizeof n);
      if (write(fd, f, sizeof f) != sizeof f) die("write");
      sent_at = now();
      waiting = 1;
    }
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5) <= 0) continue;
    ssize_t len = read(fd, b, sizeof b);
    if (len < 14 + (ssize_t)sizeof(long)) continue;
    if (b[12] != (ETHERTYPE >> 8) || b[13] != (ETHERTYPE & 0xff)) continue;
    long seq;
    memcpy(&seq, b + 14, sizeof seq);
    if (sender) {
      if (memcmp(b + 6, MAC_ECHO, 6) != 0) continue;
      if (waiting && seq == n) {
        n++;
        waiting = 0;
      }
    } else {
      if (memcmp(b + 6, MAC_SEND, 6) != 0) continue;
      if (seq == last + 1) {
        distinct++;
      } else if (seq != last) {
        printf("ERROR frame %ld after %ld\n", seq, last);
        errors++;
      }
      last = seq;
      memcpy(b, MAC_SEND, 6);
      memcpy(b + 6, MAC_ECHO, 6);
      if (write(fd, b, len) == len) echoed++;
    }
  }
  if (sender)
    printf("final acked %ld retries %ld\n", n, retries);
  else
    printf("final echoed %ld distinct %ld last %ld errors %ld\n", echoed, distinct, last, errors);
  fflush(stdout);
  return errors ? 1 : 0;
}
