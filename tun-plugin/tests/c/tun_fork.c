/*
 * A tun fd shared by a parent and its child (inherited across fork), for
 * the tun plugin's tests.
 *
 *   tun_fork NAME [mq]
 *
 * Creates tun device NAME (with "mq": IFF_MULTI_QUEUE), forks, and both
 * processes print "<parent|child> <i> attached <0|1>" every 50 ms, where
 * attached says whether their fd is attached to NAME (TUNGETIFF), until
 * the file "stop" appears.
 */
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: tun_fork NAME [mq]\n");
    return 2;
  }
  int mq = argc > 2 && !strcmp(argv[2], "mq");
  int fd = open("/dev/net/tun", O_RDWR);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (mq ? IFF_MULTI_QUEUE : 0);
  snprintf(ifr.ifr_name, IFNAMSIZ, "%s", argv[1]);
  if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr) < 0) {
    perror("tun");
    return 1;
  }
  pid_t p = fork();
  for (int i = 0; access("stop", F_OK) != 0; i++) {
    struct ifreq g;
    memset(&g, 0, sizeof g);
    int ok = ioctl(fd, TUNGETIFF, &g) == 0 && !strcmp(g.ifr_name, argv[1]);
    printf("%s %d attached %d\n", p ? "parent" : "child", i, ok);
    fflush(stdout);
    usleep(50000);
  }
  if (p > 0) waitpid(p, NULL, 0);
  return 0;
}
