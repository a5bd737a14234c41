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
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  int sender = pid != 0;
  int fd = sender ? sv[0] : sv[1];
  close(sender ? sv[1] : sv[0]);
  int nd;
  struct ibv_device **l = ibv_get_device_list(&nd);
  if (!l || nd < 1) die("no device");
  struct ibv_context *ctx = ibv_open_device(l[0]);
  struct ibv_pd *pd = ctx ? ibv_alloc_pd(ctx) : NULL;
  struct ibv_cq *cq = ctx ? ibv_create_cq(ctx, 4, NULL, NULL, 0) : NULL;
  if (!pd || !cq) die("open/pd/cq");
  static char buf[4096];
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) die("reg_mr");
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = cq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = a.cap.max_recv_wr = 2;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  struct ibv_qp *qp = ibv_create_qp(pd, &a);
  if (!qp) die("create_qp");
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_INIT;
  m.port_num = 1;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
    die("INIT");
  struct ibv_port_attr pa;
  if (ibv_query_port(ctx, 1, &pa)) die("query_port");
  uint32_t mine[2] = {qp->qp_num, pa.lid}, peer[2];
  io(fd, mine, sizeof mine, 1);
  io(fd, peer, sizeof peer, 0);
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTR;
  m.path_mtu = IBV_MTU_1024;
  m.dest_qp_num = peer[0];
  m.rq_psn = 7;
  m.max_dest_rd_atomic = 1;
  m.min_rnr_timer = 12;
  m.ah_attr.dlid = (uint16_t)peer[1];
  m.ah_attr.port_num = 1;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    die("RTR");
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTS;
  m.timeout = 14;
  m.retry_cnt = 7;
  m.rnr_retry = 7;
  m.sq_psn = 7;
  m.max_rd_atomic = 1;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
    die("RTS");
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
