/* RC SENDs that wait for a receive (RNR) at the checkpoint, into QPs that
 * take their receives from one shared SRQ.
 *
 * `rnr_srq`: forks; the parent (sender) connects two RC QPs, A0 and A1,
 * to the child's (receiver's) B0 and B1, both attached to one SRQ (ids
 * over a socketpair; rnr_retry 7: retried for ever).
 *   1. The receiver posts one receive on the SRQ; the sender sends "A0 #0"
 *      on A0; the receiver polls it (it must come on B0): B0 has received
 *      one message, B1 none, and the SRQ is empty.
 *   2. The sender posts "A0 #1" on A0 and "A1 #0" on A1 (signaled): both
 *      wait for a receive. The child prints `not receiving` and posts none
 *      until a file named `go` exists in the current directory (the test
 *      creates it after the checkpoint: after the restart, or the resume).
 *   3. Then the receiver posts four receives on the SRQ; the sender, once
 *      both its sends completed, sends "A0 end" on A0 and "A1 end" on A1.
 *      Each QP's messages arrive in order, so the receiver must get, on
 *      B0, exactly "A0 #1" then "A0 end", and on B1 "A1 #0" then "A1 end":
 *      a message lost, sent twice or sent again from before the checkpoint
 *      ("A0 #0") breaks that sequence. Prints `received ok`; the sender
 *      prints `sent ok`. Exit 1 on any error or time-out (60 s). */
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

#define SLOT 256
static char buf[8 * SLOT];

/* Posts a signaled SEND of the string `s` (from slot `slot` of buf). */
static void send_str(struct ibv_qp *qp, struct ibv_mr *mr, int slot, const char *s, uint64_t id) {
  char *p = buf + slot * SLOT;
  snprintf(p, SLOT, "%s", s);
  struct ibv_sge sg = {(uintptr_t)p, (uint32_t)strlen(s) + 1, mr->lkey};
  struct ibv_send_wr w, *bad;
  memset(&w, 0, sizeof w);
  w.wr_id = id;
  w.sg_list = &sg;
  w.num_sge = 1;
  w.opcode = IBV_WR_SEND;
  w.send_flags = IBV_SEND_SIGNALED;
  if (ibv_post_send(qp, &w, &bad)) die("post_send");
}

/* Posts a receive into slot `slot` of buf on the SRQ. */
static void recv_slot(struct ibv_srq *srq, struct ibv_mr *mr, int slot) {
  memset(buf + slot * SLOT, 0, SLOT);
  struct ibv_sge sg = {(uintptr_t)(buf + slot * SLOT), SLOT, mr->lkey};
  struct ibv_recv_wr w, *bad;
  memset(&w, 0, sizeof w);
  w.wr_id = (uint64_t)slot;
  w.sg_list = &sg;
  w.num_sge = 1;
  if (ibv_post_srq_recv(srq, &w, &bad)) die("post_srq_recv");
}

/* Waits (at most 60 s) for one successful completion; returns it. */
static struct ibv_wc wait_wc(struct ibv_cq *cq, const char *what) {
  struct ibv_wc wc;
  double t0 = now();
  int k;
  while ((k = ibv_poll_cq(cq, 1, &wc)) == 0) {
    if (now() - t0 > 60) die(what);
    usleep(1000);
  }
  if (k < 0 || wc.status != IBV_WC_SUCCESS) {
    printf("completion status %d (%s) wr_id %llu\n", wc.status, ibv_wc_status_str(wc.status),
           (unsigned long long)wc.wr_id);
    die("completion error");
  }
  return wc;
}

int main(void) {
  pid_t pid;
  int fd = fork_pair(&pid);
  int sender = pid != 0;
  struct ibv_context *ctx;
  struct ibv_pd *pd;
  struct ibv_cq *cq;
  open_first(16, &ctx, &pd, &cq);
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) die("reg_mr");
  struct ibv_srq *srq = NULL;
  if (!sender) {
    struct ibv_srq_init_attr sa;
    memset(&sa, 0, sizeof sa);
    sa.attr.max_wr = 8;
    sa.attr.max_sge = 1;
    srq = ibv_create_srq(pd, &sa);
    if (!srq) die("create_srq");
  }
  struct ibv_qp *qp[2] = {rc_qp(pd, cq, srq, 4), rc_qp(pd, cq, srq, 4)};
  struct ibv_port_attr pa;
  if (ibv_query_port(ctx, 1, &pa)) die("query_port");
  uint32_t mine[3] = {qp[0]->qp_num, qp[1]->qp_num, pa.lid}, peer[3];
  io(fd, mine, sizeof mine, 1);
  io(fd, peer, sizeof peer, 0);
  rc_to_rts(qp[0], peer[0], peer[2]);
  rc_to_rts(qp[1], peer[1], peer[2]);
  char c = 1;
  if (sender) {
    io(fd, &c, 1, 0); /* the receiver posted one receive */
    send_str(qp[0], mr, 0, "A0 #0", 10);
    if (wait_wc(cq, "the first send did not complete").wr_id != 10) die("first send's wr_id");
    io(fd, &c, 1, 0); /* the receiver polled it: its SRQ is empty */
    send_str(qp[0], mr, 1, "A0 #1", 11);
    send_str(qp[1], mr, 2, "A1 #0", 20);
    io(fd, &c, 1, 1);
    int done = 0;
    for (int i = 0; i < 2; i++) {
      struct ibv_wc wc = wait_wc(cq, "the waiting sends did not complete");
      if (wc.wr_id == 11 && !(done & 1))
        done |= 1;
      else if (wc.wr_id == 20 && !(done & 2))
        done |= 2;
      else
        die("unexpected send completion");
    }
    send_str(qp[0], mr, 3, "A0 end", 12);
    send_str(qp[1], mr, 4, "A1 end", 21);
    for (int i = 0; i < 2; i++) {
      uint64_t id = wait_wc(cq, "the last sends did not complete").wr_id;
      if (id != 12 && id != 21) die("unexpected last send completion");
    }
    printf("sent ok\n");
    fflush(stdout);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
  }
  recv_slot(srq, mr, 7);
  io(fd, &c, 1, 1);
  struct ibv_wc wc = wait_wc(cq, "no first message");
  if (wc.wr_id != 7 || wc.qp_num != qp[0]->qp_num || strcmp(buf + 7 * SLOT, "A0 #0"))
    die("wrong first message");
  io(fd, &c, 1, 1);
  io(fd, &c, 1, 0); /* the sender posted its two sends */
  printf("not receiving\n");
  fflush(stdout);
  while (access("go", F_OK) != 0) usleep(10000);
  for (int i = 0; i < 4; i++) recv_slot(srq, mr, i);
  static const char *want[2][2] = {{"A0 #1", "A0 end"}, {"A1 #0", "A1 end"}};
  int got[2] = {0, 0};
  for (int i = 0; i < 4; i++) {
    wc = wait_wc(cq, "a message did not arrive in 60 s after the receives were posted");
    int k = wc.qp_num == qp[0]->qp_num ? 0 : wc.qp_num == qp[1]->qp_num ? 1 : -1;
    if (k < 0 || wc.wr_id > 3 || !(wc.opcode & IBV_WC_RECV)) die("unexpected completion");
    const char *m = buf + wc.wr_id * SLOT;
    printf("B%d got \"%s\"\n", k, m);
    fflush(stdout);
    if (got[k] > 1 || strcmp(m, want[k][got[k]]) || wc.byte_len != strlen(m) + 1)
      die("a message out of sequence (lost, twice, or sent again)");
    got[k]++;
  }
  printf("received ok\n");
  fflush(stdout);
  return 0;
}
