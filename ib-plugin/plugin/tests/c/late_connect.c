/* Peers that first talk after the restart, with the ids they learnt before it.
 *
 * `late_connect`: forks; the parent (A) and the child (B) each open the
 * device and make a UD QP (ready to send) and an RC QP (in INIT), register
 * a buffer (remote write allowed) and exchange over a socketpair their LID,
 * both QP numbers, the buffer's address and rkey. Before the checkpoint:
 * A connects its RC QP to B's (RTR, RTS), B leaves its own in INIT (a
 * connection half made, as OpenMPI's udcm may leave one); each posts its
 * receives; no message moves. Both print `ready` lines and wait for a file
 * named `go` (the test creates it after the restart). Then, with nothing
 * but the ids of the first run:
 *   1. B creates an AH to A's LID and sends a UD message to A's UD QP;
 *      A checks it, and that the completion names B's UD QP and LID;
 *   2. B connects its RC QP to A's (RTR, RTS), RDMA-writes a pattern into
 *      A's buffer with A's rkey and SENDs; A checks the pattern;
 *   3. A RDMA-writes into B's buffer with B's rkey and SENDs; B checks.
 * Prints `ud ok`, `rdma from B ok`, `rdma from A ok`. Exit 1 on any error
 * or after 30 s without an expected completion. */
#include <infiniband/verbs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define QKEY 0x11111111u

static int is_a;

static void die(const char *w) {
  printf("FAILED (%s): %s\n", is_a ? "A" : "B", w);
  fflush(stdout);
  exit(1);
}

#include "util.h"

/* The next completion, which must be `wr_id`'s and successful. */
static struct ibv_wc next_wc(struct ibv_cq *cq, uint64_t wr_id, const char *what) {
  struct ibv_wc wc;
  double t0 = now();
  int k;
  while ((k = ibv_poll_cq(cq, 1, &wc)) == 0) {
    if (now() - t0 > 30) die(what);
    usleep(1000);
  }
  if (k < 0 || wc.status != IBV_WC_SUCCESS || wc.wr_id != wr_id) {
    fprintf(stderr, "late_connect: %s: status %d wr_id %llu\n", what, wc.status,
            (unsigned long long)wc.wr_id);
    die(what);
  }
  return wc;
}

struct ids {
  uint32_t lid, ud, rc, rkey;
  uint64_t addr;
};

/* Buffer layout: UD receive (GRH + message), send staging, RC receive,
 * the RDMA target. */
enum { UD_RECV = 0, STAGE = 256, RC_RECV = 512, TARGET = 1024, TLEN = 1024 };
static char buf[4096];

static void modify(struct ibv_qp *qp, struct ibv_qp_attr *m, int mask, const char *w) {
  if (ibv_modify_qp(qp, m, mask)) die(w);
}

static void rc_connect(struct ibv_qp *qp, const struct ids *peer) {
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTR;
  m.path_mtu = IBV_MTU_1024;
  m.dest_qp_num = peer->rc;
  m.rq_psn = 5;
  m.max_dest_rd_atomic = 1;
  m.min_rnr_timer = 12;
  m.ah_attr.dlid = (uint16_t)peer->lid;
  m.ah_attr.port_num = 1;
  modify(qp, &m,
         IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
             IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER,
         "RC RTR");
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTS;
  m.timeout = 14;
  m.retry_cnt = 7;
  m.rnr_retry = 7;
  m.sq_psn = 5;
  m.max_rd_atomic = 1;
  modify(qp, &m,
         IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
             IBV_QP_MAX_QP_RD_ATOMIC,
         "RC RTS");
}

static void post_recv(struct ibv_qp *qp, struct ibv_mr *mr, int off, int len, uint64_t id) {
  struct ibv_sge sg = {(uintptr_t)(buf + off), (uint32_t)len, mr->lkey};
  struct ibv_recv_wr w, *bad;
  memset(&w, 0, sizeof w);
  w.wr_id = id;
  w.sg_list = &sg;
  w.num_sge = 1;
  if (ibv_post_recv(qp, &w, &bad)) die("post_recv");
}

/* RDMA WRITE of `who`'s pattern into the peer's target, then a SEND. */
static void write_and_send(struct ibv_qp *qp, struct ibv_cq *cq, struct ibv_mr *mr,
                           const struct ids *peer, char who, uint64_t id) {
  for (int i = 0; i < TLEN; i++) buf[TARGET + i] = (char)(who + i * 7);
  struct ibv_sge sg = {(uintptr_t)(buf + TARGET), TLEN, mr->lkey};
  struct ibv_send_wr w, *bad;
  memset(&w, 0, sizeof w);
  w.wr_id = id;
  w.sg_list = &sg;
  w.num_sge = 1;
  w.opcode = IBV_WR_RDMA_WRITE;
  w.send_flags = IBV_SEND_SIGNALED;
  w.wr.rdma.remote_addr = peer->addr + TARGET;
  w.wr.rdma.rkey = peer->rkey;
  if (ibv_post_send(qp, &w, &bad)) die("post RDMA WRITE");
  next_wc(cq, id, "RDMA WRITE completion");
  strcpy(buf + STAGE, "written");
  struct ibv_sge s2 = {(uintptr_t)(buf + STAGE), 8, mr->lkey};
  memset(&w, 0, sizeof w);
  w.wr_id = id + 1;
  w.sg_list = &s2;
  w.num_sge = 1;
  w.opcode = IBV_WR_SEND;
  w.send_flags = IBV_SEND_SIGNALED;
  if (ibv_post_send(qp, &w, &bad)) die("post SEND");
  next_wc(cq, id + 1, "SEND completion");
}

static void check_target(char who) {
  for (int i = 0; i < TLEN; i++)
    if (buf[TARGET + i] != (char)(who + i * 7)) die("RDMA WRITE data");
  if (strcmp(buf + RC_RECV, "written")) die("SEND data");
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  pid_t pid;
  int fd = fork_pair(&pid);
  is_a = pid != 0;
  struct ibv_context *ctx;
  struct ibv_pd *pd;
  struct ibv_cq *cq;
  open_first(16, &ctx, &pd, &cq);
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, sizeof buf,
                                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  if (!mr) die("reg_mr");
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = cq;
  a.cap.max_send_wr = a.cap.max_recv_wr = 4;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  a.qp_type = IBV_QPT_UD;
  struct ibv_qp *ud = ibv_create_qp(pd, &a);
  a.qp_type = IBV_QPT_RC;
  struct ibv_qp *rc = ibv_create_qp(pd, &a);
  if (!ud || !rc) die("create_qp");
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_INIT;
  m.port_num = 1;
  m.qkey = QKEY;
  modify(ud, &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY, "UD INIT");
  m.qp_state = IBV_QPS_RTR;
  modify(ud, &m, IBV_QP_STATE, "UD RTR");
  m.qp_state = IBV_QPS_RTS;
  m.sq_psn = 1;
  modify(ud, &m, IBV_QP_STATE | IBV_QP_SQ_PSN, "UD RTS");
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_INIT;
  m.port_num = 1;
  m.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
  modify(rc, &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS,
         "RC INIT");
  struct ibv_port_attr pa;
  if (ibv_query_port(ctx, 1, &pa)) die("query_port");
  struct ids mine = {pa.lid, ud->qp_num, rc->qp_num, mr->rkey, (uintptr_t)buf}, peer;
  io(fd, &mine, sizeof mine, 1);
  io(fd, &peer, sizeof peer, 0);
  post_recv(rc, mr, RC_RECV, 64, 2);
  if (is_a) {
    post_recv(ud, mr, UD_RECV, 40 + 64, 1);
    rc_connect(rc, &peer); /* B stays in INIT until after the restart */
  }
  printf("%s ready\n", is_a ? "A" : "B");
  while (access("go", F_OK) != 0) usleep(10000);

  if (!is_a) {
    /* 1. UD to A, with an AH made now from A's first-run LID. */
    struct ibv_ah_attr aa;
    memset(&aa, 0, sizeof aa);
    aa.dlid = (uint16_t)peer.lid;
    aa.port_num = 1;
    struct ibv_ah *ah = ibv_create_ah(pd, &aa);
    if (!ah) die("create_ah");
    strcpy(buf + STAGE, "a datagram from B");
    struct ibv_sge sg = {(uintptr_t)(buf + STAGE), 32, mr->lkey};
    struct ibv_send_wr w, *bad;
    memset(&w, 0, sizeof w);
    w.wr_id = 10;
    w.sg_list = &sg;
    w.num_sge = 1;
    w.opcode = IBV_WR_SEND;
    w.send_flags = IBV_SEND_SIGNALED;
    w.wr.ud.ah = ah;
    w.wr.ud.remote_qpn = peer.ud;
    w.wr.ud.remote_qkey = QKEY;
    if (ibv_post_send(ud, &w, &bad)) die("post UD send");
    next_wc(cq, 10, "UD send completion");
    /* 2. The half-made connection completed now, then RDMA into A. */
    rc_connect(rc, &peer);
    write_and_send(rc, cq, mr, &peer, 'B', 20);
    /* 3. A's RDMA into us. */
    next_wc(cq, 2, "A's SEND");
    check_target('A');
    printf("rdma from A ok\n");
    return 0;
  }
  struct ibv_wc wc = next_wc(cq, 1, "B's datagram");
  if (strcmp(buf + UD_RECV + 40, "a datagram from B")) die("datagram data");
  if (wc.src_qp != peer.ud || wc.slid != peer.lid) {
    fprintf(stderr, "late_connect: datagram from %#x/%#x, B is %#x/%#x\n", wc.slid, wc.src_qp,
            peer.lid, peer.ud);
    die("datagram source");
  }
  printf("ud ok\n");
  next_wc(cq, 2, "B's SEND");
  check_target('B');
  printf("rdma from B ok\n");
  write_and_send(rc, cq, mr, &peer, 'A', 30);
  int st;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}
