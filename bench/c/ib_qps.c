/* `ib_qps N [PAUSE_US]`: two processes (this one and a forked child) connected by N
 * RC queue pairs on the first verbs device, for `bench ibqps`: the time
 * the InfiniBand plugin's drain and rebuild take grows with the number of
 * QPs. Ids are exchanged over a socketpair. Then, forever, in rounds
 * PAUSE_US apart (default 0: back to back, so a checkpoint finds sends in
 * flight), the parent sends one message on each QP (its round number and
 * QP index) and the child checks each; the child prints `round R ok` every
 * 20 rounds (the first one as `ready`). Exit 1 on any error or wrong
 * message. */
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *w) {
  printf("FAILED: %s\n", w);
  fflush(stdout);
  exit(1);
}

static void io(int fd, void *b, size_t n, int wr) {
  char *p = b;
  while (n) {
    ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
    if (k <= 0) die("socketpair i/o");
    p += k;
    n -= (size_t)k;
  }
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 100;
  int pause_us = argc > 2 ? atoi(argv[2]) : 0;
  if (n < 1) die("N");
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  int parent = pid != 0;
  int fd = parent ? sv[0] : sv[1];
  close(parent ? sv[1] : sv[0]);

  int nd;
  struct ibv_device **l = ibv_get_device_list(&nd);
  if (!l || nd < 1) die("no device");
  struct ibv_context *ctx = ibv_open_device(l[0]);
  if (!ctx) die("open");
  struct ibv_pd *pd = ibv_alloc_pd(ctx);
  struct ibv_cq *cq = ibv_create_cq(ctx, 2 * n + 16, NULL, NULL, 0);
  if (!pd || !cq) die("pd/cq");
  uint64_t *buf = calloc((size_t)n, 16);
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, (size_t)n * 16, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) die("reg_mr");
  struct ibv_port_attr pa;
  if (ibv_query_port(ctx, 1, &pa)) die("query_port");
  struct ibv_qp **qp = calloc((size_t)n, sizeof *qp);
  uint32_t *mine = calloc((size_t)n + 1, 4), *peer = calloc((size_t)n + 1, 4);
  mine[n] = pa.lid;
  for (int i = 0; i < n; i++) {
    struct ibv_qp_init_attr a;
    memset(&a, 0, sizeof a);
    a.send_cq = a.recv_cq = cq;
    a.qp_type = IBV_QPT_RC;
    a.cap.max_send_wr = a.cap.max_recv_wr = 2;
    a.cap.max_send_sge = a.cap.max_recv_sge = 1;
    qp[i] = ibv_create_qp(pd, &a);
    if (!qp[i]) die("create_qp");
    struct ibv_qp_attr m;
    memset(&m, 0, sizeof m);
    m.qp_state = IBV_QPS_INIT;
    m.port_num = 1;
    if (ibv_modify_qp(qp[i], &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                     IBV_QP_ACCESS_FLAGS))
      die("INIT");
    mine[i] = qp[i]->qp_num;
  }
  io(fd, mine, ((size_t)n + 1) * 4, 1);
  io(fd, peer, ((size_t)n + 1) * 4, 0);
  for (int i = 0; i < n; i++) {
    struct ibv_qp_attr m;
    memset(&m, 0, sizeof m);
    m.qp_state = IBV_QPS_RTR;
    m.path_mtu = IBV_MTU_1024;
    m.dest_qp_num = peer[i];
    m.rq_psn = 1;
    m.max_dest_rd_atomic = 1;
    m.min_rnr_timer = 12;
    m.ah_attr.dlid = (uint16_t)peer[n];
    m.ah_attr.port_num = 1;
    if (ibv_modify_qp(qp[i], &m, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                                     IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                     IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
      die("RTR");
    memset(&m, 0, sizeof m);
    m.qp_state = IBV_QPS_RTS;
    m.timeout = 14;
    m.retry_cnt = 7;
    m.rnr_retry = 7;
    m.sq_psn = 1;
    m.max_rd_atomic = 1;
    if (ibv_modify_qp(qp[i], &m, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                     IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                     IBV_QP_MAX_QP_RD_ATOMIC))
      die("RTS");
  }
  struct ibv_wc wc[32];
  for (uint64_t r = 0;; r++) {
    if (parent) {
      char go;
      io(fd, &go, 1, 0); /* the child's receives are posted */
      for (int i = 0; i < n; i++) {
        buf[2 * i] = r;
        buf[2 * i + 1] = (uint64_t)i;
        struct ibv_sge sg = {(uintptr_t)&buf[2 * i], 16, mr->lkey};
        struct ibv_send_wr w, *bad;
        memset(&w, 0, sizeof w);
        w.wr_id = (uint64_t)i;
        w.sg_list = &sg;
        w.num_sge = 1;
        w.opcode = IBV_WR_SEND;
        w.send_flags = IBV_SEND_SIGNALED;
        if (ibv_post_send(qp[i], &w, &bad)) die("post_send");
      }
      for (int got = 0; got < n;) {
        int k = ibv_poll_cq(cq, 32, wc);
        if (k < 0) die("poll");
        for (int j = 0; j < k; j++)
          if (wc[j].status != IBV_WC_SUCCESS) die("send completion");
        got += k;
      }
      io(fd, &go, 1, 0); /* the child checked them */
      if (pause_us > 0) usleep((useconds_t)pause_us);
    } else {
      for (int i = 0; i < n; i++) {
        struct ibv_sge sg = {(uintptr_t)&buf[2 * i], 16, mr->lkey};
        struct ibv_recv_wr w, *bad;
        memset(&w, 0, sizeof w);
        w.wr_id = (uint64_t)i;
        w.sg_list = &sg;
        w.num_sge = 1;
        if (ibv_post_recv(qp[i], &w, &bad)) die("post_recv");
      }
      char go = 1;
      io(fd, &go, 1, 1);
      for (int got = 0; got < n;) {
        int k = ibv_poll_cq(cq, 32, wc);
        if (k < 0) die("poll");
        for (int j = 0; j < k; j++) {
          int i = (int)wc[j].wr_id;
          if (wc[j].status != IBV_WC_SUCCESS || wc[j].qp_num != qp[i]->qp_num)
            die("receive completion");
          if (buf[2 * i] != r || buf[2 * i + 1] != (uint64_t)i) die("wrong message");
        }
        got += k;
      }
      io(fd, &go, 1, 1);
      if (r % 20 == 0) {
        printf(r == 0 ? "ready\n" : "round %llu ok\n", (unsigned long long)r);
        fflush(stdout);
      }
    }
  }
}
