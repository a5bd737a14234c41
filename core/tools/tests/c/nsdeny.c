/* Run a command as on a machine that lacks some kernel features: a seccomp
 * filter makes the named system calls fail.
 *   nsdeny unshare,clone3 -- cmd args...
 * unshare fails with EPERM (unprivileged user namespaces turned off),
 * clone3 and kcmp with ENOSYS (older kernels), prctl(PR_GET_TID_ADDRESS)
 * with EINVAL (a kernel without CONFIG_CHECKPOINT_RESTORE). */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define FAIL(e) BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (e))

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--")) {
    fprintf(stderr, "usage: nsdeny unshare,clone3,kcmp,tidaddr -- cmd args\n");
    return 2;
  }
  struct sock_filter f[64];
  int n = 0;
  f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  f[n++] = (struct sock_filter)ALLOW;
  f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  struct { const char *name; int nr; int err; } calls[] = {
      {"unshare", SYS_unshare, EPERM}, {"clone3", SYS_clone3, ENOSYS}, {"kcmp", SYS_kcmp, ENOSYS}};
  for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
    if (!strstr(argv[1], calls[i].name)) continue;
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, calls[i].nr, 0, 1);
    f[n++] = (struct sock_filter)FAIL(calls[i].err);
  }
  if (strstr(argv[1], "tidaddr")) {
    /* prctl(PR_GET_TID_ADDRESS, ...) */
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_prctl, 0, 3);
    f[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]));
    f[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, PR_GET_TID_ADDRESS, 0, 1);
    f[n++] = (struct sock_filter)FAIL(EINVAL);
  }
  f[n++] = (struct sock_filter)ALLOW;
  struct sock_fprog prog = {.len = (unsigned short)n, .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog)) {
    perror("seccomp");
    return 2;
  }
  execvp(argv[3], argv + 3);
  perror("exec");
  return 127;
}
