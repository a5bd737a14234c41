/*
 * A user-space network behind a tun device, for the tun plugin's tests.
 *
 *   tun_ping NAME [persist] [mq] [vhost]
 *
 * Creates tun device NAME (IFF_TUN | IFF_NO_PI; with "mq" IFF_MULTI_QUEUE
 * and two queues; with "persist" TUNSETPERSIST), gives it 10.77.0.1/24,
 * MTU 1400, brings it up and routes 10.78.0.0/24 through it, all with
 * socket ioctls. Then every 5 ms it sends a numbered UDP datagram to
 * 10.78.0.5:9999 (which the kernel routes into the tun), reads what comes
 * out of the tun: its own datagrams (counted, in order) and ICMP echo
 * requests to any address behind it, which it answers (a user-space ping
 * responder). It prints "sent S got G lost L pings P" now and then, and
 * "final ..." when the file "stop" appears in its directory. A datagram
 * that arrives out of order or twice is an error line. With "vhost" it
 * first tries VHOST_NET_SET_BACKEND and prints the outcome.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/vhost.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) {
  printf("ERROR %s: %s\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

static uint16_t csum(const void *p, size_t n) {
  const uint8_t *b = p;
  uint32_t s = 0;
  for (size_t i = 0; i + 1 < n; i += 2) s += (b[i] << 8) | b[i + 1];
  if (n & 1) s += b[n - 1] << 8;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (uint16_t)~s;
}

static void set_addr(struct sockaddr *sa, const char *ip) {
  struct sockaddr_in *in = (struct sockaddr_in *)sa;
  memset(in, 0, sizeof *in);
  in->sin_family = AF_INET;
  inet_pton(AF_INET, ip, &in->sin_addr);
}

static int open_queue(const char *name, int flags) {
  int fd = open("/dev/net/tun", O_RDWR);
  if (fd < 0) die("open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = flags;
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  if (strcmp(ifr.ifr_name, name) != 0) die("TUNSETIFF name");
  return fd;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: tun_ping NAME [persist] [mq] [vhost]\n");
    return 2;
  }
  const char *name = argv[1];
  int persist = 0, mq = 0, vhost = 0;
  for (int i = 2; i < argc; i++) {
    if (!strcmp(argv[i], "persist")) persist = 1;
    if (!strcmp(argv[i], "mq")) mq = 1;
    if (!strcmp(argv[i], "vhost")) vhost = 1;
  }
  int flags = IFF_TUN | IFF_NO_PI | (mq ? IFF_MULTI_QUEUE : 0);
  int q[2], nq = mq ? 2 : 1;
  for (int i = 0; i < nq; i++) q[i] = open_queue(name, flags);
  if (persist && ioctl(q[0], TUNSETPERSIST, 1) < 0) die("TUNSETPERSIST");
  if (ioctl(q[0], TUNSETSNDBUF, &(int){123456}) < 0) die("TUNSETSNDBUF");
  for (int i = 0; i < nq; i++) fcntl(q[i], F_SETFL, O_NONBLOCK);
  if (vhost) {
    /* What QEMU does with vhost=on (here on the tun fd itself, as this
     * machine may have no /dev/vhost-net): the plugin refuses it. */
    struct vhost_vring_file f = {0, q[0]};
    int r = ioctl(q[0], VHOST_NET_SET_BACKEND, &f);
    printf("vhost backend: %s\n", r < 0 ? strerror(errno) : "accepted");
  }

  int s = socket(AF_INET, SOCK_DGRAM, 0);
  if (s < 0) die("socket");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
  set_addr(&ifr.ifr_addr, "10.77.0.1");
  if (ioctl(s, SIOCSIFADDR, &ifr) < 0) die("SIOCSIFADDR");
  set_addr(&ifr.ifr_netmask, "255.255.255.0");
  if (ioctl(s, SIOCSIFNETMASK, &ifr) < 0) die("SIOCSIFNETMASK");
  ifr.ifr_mtu = 1400;
  if (ioctl(s, SIOCSIFMTU, &ifr) < 0) die("SIOCSIFMTU");
  if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die("SIOCGIFFLAGS");
  ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
  if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die("SIOCSIFFLAGS");
  struct rtentry rt;
  memset(&rt, 0, sizeof rt);
  set_addr(&rt.rt_dst, "10.78.0.0");
  set_addr(&rt.rt_genmask, "255.255.255.0");
  rt.rt_flags = RTF_UP;
  rt.rt_dev = (char *)name;
  if (ioctl(s, SIOCADDRT, &rt) < 0) die("SIOCADDRT");

  struct sockaddr_in dst;
  memset(&dst, 0, sizeof dst);
  dst.sin_family = AF_INET;
  dst.sin_port = htons(9999);
  inet_pton(AF_INET, "10.78.0.5", &dst.sin_addr);
  printf("ready %s\n", name);
  fflush(stdout);

  long sent = 0, got = 0, pings = 0, last = -1, errors = 0;
  double next = now();
  uint8_t buf[2048];
  for (;;) {
    if (now() >= next) {
      char msg[32];
      int n = snprintf(msg, sizeof msg, "seq %ld", sent);
      if (sendto(s, msg, n, 0, (struct sockaddr *)&dst, sizeof dst) == n) sent++;
      next += 0.005;
      if (sent % 100 == 0) {
        printf("sent %ld got %ld lost %ld pings %ld\n", sent, got, sent - got, pings);
        fflush(stdout);
        if (access("stop", F_OK) == 0) break;
      }
    }
    struct pollfd p[2] = {{q[0], POLLIN, 0}, {mq ? q[1] : -1, POLLIN, 0}};
    poll(p, 2, 2);
    for (int i = 0; i < nq; i++) {
      ssize_t n;
      while ((n = read(q[i], buf, sizeof buf)) > 0) {
        if (n < 20 || (buf[0] >> 4) != 4) continue;
        int hl = (buf[0] & 15) * 4;
        if (buf[9] == 17 && n >= hl + 8) { /* UDP */
          uint16_t dport = (buf[hl + 2] << 8) | buf[hl + 3];
          if (dport != 9999) continue;
          long seq = -1;
          char tmp[32] = {0};
          memcpy(tmp, buf + hl + 8, (size_t)(n - hl - 8) < 31 ? (size_t)(n - hl - 8) : 31);
          if (sscanf(tmp, "seq %ld", &seq) != 1) continue;
          if (seq <= last) {
            printf("ERROR datagram %ld after %ld\n", seq, last);
            errors++;
          }
          last = seq;
          got++;
        } else if (buf[9] == 1 && n >= hl + 8 && buf[hl] == 8) { /* ICMP echo */
          uint8_t t[4];
          memcpy(t, buf + 12, 4);
          memcpy(buf + 12, buf + 16, 4);
          memcpy(buf + 16, t, 4);
          buf[10] = buf[11] = 0;
          uint16_t c = csum(buf, hl);
          buf[10] = c >> 8;
          buf[11] = c & 0xff;
          buf[hl] = 0;
          buf[hl + 2] = buf[hl + 3] = 0;
          c = csum(buf + hl, n - hl);
          buf[hl + 2] = c >> 8;
          buf[hl + 3] = c & 0xff;
          if (write(q[i], buf, n) == n) pings++;
        }
      }
    }
  }
  printf("final sent %ld got %ld lost %ld pings %ld errors %ld\n", sent, got, sent - got, pings,
         errors);
  fflush(stdout);
  return errors ? 1 : 0;
}
