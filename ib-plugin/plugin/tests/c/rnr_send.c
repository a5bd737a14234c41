/* An RC SEND that waits for a receive (RNR) at the checkpoint.
 *
 * `rnr_send`: forks; the parent (sender) and the child (receiver) connect
 * one RC QP each (ids over a socketpair; rnr_retry 7: retried for ever).
 * The parent posts one signaled SEND and tells the child; the child prints
 * `not receiving` and posts no receive until a file named `go` exists in
 * the current directory (the test creates it after the restart). Then it
 * posts the receive and waits for the message (at most 30 s), checks it,
 * and prints `received ok`; the parent waits for its send's completion (at
 * most 60 s) and prints `sent ok`. Exit 1 on any error or time-out. */
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *w) {
  printf("FAILED: %s\n", w);
  fflush(stdout);
  exit(1);
}

#include "util.h"

int main(void) {
  pid_t pid;
  int fd = fork_pair(&pid);
  int sender = pid != 0;
  struct ibv_context *ctx;
  struct ibv_pd *pd;
  struct ibv_cq *cq;
  open_first(4, &ctx, &pd, &cq);
  static char buf[4096];
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) die("reg_mr");
  struct ibv_qp *qp = rc_qp(pd, cq, NULL, 2);
  struct ibv_port_attr pa;
  if (ibv_query_port(ctx, 1, &pa)) die("query_port");
  uint32_t mine[2] = {qp->qp_num, pa.lid}, peer[2];
  io(fd, mine, sizeof mine, 1);
  io(fd, peer, sizeof peer, 0);
  rc_to_rts(qp, peer[0], peer[1]);
  struct ibv_wc wc;
  if (sender) {
    strcpy(buf, "the message sent before the checkpoint");
    struct ibv_sge sg = {(uintptr_t)buf, 64, mr->lkey};
    struct ibv_send_wr w, *bad;
    memset(&w, 0, sizeof w);
    w.wr_id = 42;
    w.sg_list = &sg;
    w.num_sge = 1;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED;
    if (ibv_post_send(qp, &w, &bad)) die("post_send");
    char c = 1;
    io(fd, &c, 1, 1);
    double t0 = now();
    int k;
    while ((k = ibv_poll_cq(cq, 1, &wc)) == 0) {
      if (now() - t0 > 60) die("the send did not complete in 60 s");
      usleep(1000);
    }
    if (k < 0 || wc.status != IBV_WC_SUCCESS || wc.wr_id != 42) die("send completion");
    printf("sent ok\n");
    fflush(stdout);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
  }
  char c;
  io(fd, &c, 1, 0);
  printf("not receiving\n");
  fflush(stdout);
  while (access("go", F_OK) != 0) usleep(10000);
  struct ibv_sge sg = {(uintptr_t)buf, sizeof buf, mr->lkey};
  struct ibv_recv_wr w, *bad;
  memset(&w, 0, sizeof w);
  w.wr_id = 7;
  w.sg_list = &sg;
  w.num_sge = 1;
  if (ibv_post_recv(qp, &w, &bad)) die("post_recv");
  double t0 = now();
  int k;
  while ((k = ibv_poll_cq(cq, 1, &wc)) == 0) {
    if (now() - t0 > 30) die("no message in 30 s after the receive was posted");
    usleep(1000);
  }
  if (k < 0 || wc.status != IBV_WC_SUCCESS || wc.wr_id != 7) die("receive completion");
  if (strcmp(buf, "the message sent before the checkpoint")) die("wrong message");
  printf("received ok\n");
  fflush(stdout);
  return 0;
}
