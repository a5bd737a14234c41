/*
 * A tap device with every setting the tun plugin restores, for its tests.
 *
 *   tun_settings NAME
 *
 * Creates NAME as a multi-queue tap with virtio-net headers (IFF_TAP |
 * IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE) and three queues, sets owner
 * 1234, group 4321, offloads (checksum, TSO4/6), a 12-byte vnet header, a
 * send buffer, a transmit filter (one address), a carrier-off, a socket
 * filter (accept all), detaches the first queue (the one that made the
 * device: the plugin meets it first), and prints "ready NAME".
 * The group and the carrier are set with a raw system call, not through
 * libc's ioctl.
 * Then, each time the file "check" appears (the test removes it after
 * reading the answer), it asks the kernel about every fd and prints one
 * "state ..." line: the name and flags of each queue (or "detached"), the
 * vnet header size, send buffer, socket filter length and the offloads
 * (checksum, TSO) the device's features show. "stop" ends it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/ethtool.h>
#include <linux/filter.h>
#include <linux/sockios.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what) {
  printf("ERROR %s: %s\n", what, strerror(errno));
  fflush(stdout);
  exit(1);
}

#define FLAGS (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE)

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: tun_settings NAME\n");
    return 2;
  }
  const char *name = argv[1];
  int q[3];
  for (int i = 0; i < 3; i++) {
    q[i] = open("/dev/net/tun", O_RDWR);
    if (q[i] < 0) die("open");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = FLAGS;
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(q[i], TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  }
  if (ioctl(q[0], TUNSETOWNER, 1234) < 0) die("TUNSETOWNER");
  /* The group (and the carrier below) through a raw system call, as Go
   * programs make theirs: the plugin does not see it; it must learn it
   * from the kernel. */
  if (syscall(SYS_ioctl, q[0], TUNSETGROUP, 4321) < 0) die("TUNSETGROUP");
  if (ioctl(q[0], TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) < 0) die("TUNSETOFFLOAD");
  int hs = 12, sb = 65536 * 3, carrier = 0;
  if (ioctl(q[0], TUNSETVNETHDRSZ, &hs) < 0) die("TUNSETVNETHDRSZ");
  if (ioctl(q[0], TUNSETSNDBUF, &sb) < 0) die("TUNSETSNDBUF");
  if (syscall(SYS_ioctl, q[0], TUNSETCARRIER, &carrier) < 0) die("TUNSETCARRIER");
  struct {
    struct tun_filter f;
    unsigned char addr[6];
  } txf = {{0, 1}, {0x02, 0, 0, 0, 0, 0x42}};
  if (ioctl(q[0], TUNSETTXFILTER, &txf) < 0) die("TUNSETTXFILTER");
  struct sock_filter accept_all[] = {BPF_STMT(BPF_RET | BPF_K, 0xffff)};
  struct sock_fprog prog = {1, accept_all};
  if (ioctl(q[0], TUNATTACHFILTER, &prog) < 0) die("TUNATTACHFILTER");
  struct ifreq d;
  memset(&d, 0, sizeof d);
  d.ifr_flags = IFF_DETACH_QUEUE;
  if (ioctl(q[0], TUNSETQUEUE, &d) < 0) die("TUNSETQUEUE");
  printf("ready %s\n", name);
  fflush(stdout);
  for (;;) {
    if (access("stop", F_OK) == 0) break;
    if (access("check", F_OK) != 0) {
      usleep(10000);
      continue;
    }
    char line[512];
    int o = snprintf(line, sizeof line, "state");
    for (int i = 0; i < 3; i++) {
      struct ifreq ifr;
      memset(&ifr, 0, sizeof ifr);
      /* A detached queue: EBADFD, or (newer kernels) IFF_DETACH_QUEUE. */
      if (ioctl(q[i], TUNGETIFF, &ifr) < 0)
        o += snprintf(line + o, sizeof line - o, " q%d=%s", i,
                      errno == EBADFD ? "detached" : strerror(errno));
      else if (ifr.ifr_flags & IFF_DETACH_QUEUE)
        o += snprintf(line + o, sizeof line - o, " q%d=%s/detached", i, ifr.ifr_name);
      else
        o += snprintf(line + o, sizeof line - o, " q%d=%s/%#x", i, ifr.ifr_name,
                      ifr.ifr_flags & 0xffff);
    }
    int h = 0, s = 0;
    ioctl(q[1], TUNGETVNETHDRSZ, &h);
    ioctl(q[1], TUNGETSNDBUF, &s);
    struct sock_filter got[4];
    struct sock_fprog gp = {4, got};
    int fl = ioctl(q[1], TUNGETFILTER, &gp) < 0 ? -1 : gp.len;
    /* The offloads, as the device's features show them. */
    int sk = socket(AF_INET, SOCK_DGRAM, 0);
    struct ethtool_value csum = {ETHTOOL_GTXCSUM, 0}, tso = {ETHTOOL_GTSO, 0};
    struct ifreq e;
    memset(&e, 0, sizeof e);
    snprintf(e.ifr_name, IFNAMSIZ, "%s", name);
    e.ifr_data = (void *)&csum;
    if (ioctl(sk, SIOCETHTOOL, &e) < 0) csum.data = -1;
    e.ifr_data = (void *)&tso;
    if (ioctl(sk, SIOCETHTOOL, &e) < 0) tso.data = -1;
    close(sk);
    o += snprintf(line + o, sizeof line - o, " vnethdr=%d sndbuf=%d filter=%d csum=%d tso=%d\n", h,
                  s, fl, (int)csum.data, (int)tso.data);
    unlink("check");
    fputs(line, stdout);
    fflush(stdout);
  }
  printf("final\n");
  fflush(stdout);
  return 0;
}
