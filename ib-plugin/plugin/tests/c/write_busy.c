/* RDMA WRITEs into a process that is busy computing.
 *
 *   write_busy target PORT NBLOCKS
 *   write_busy writer HOST PORT NBLOCKS
 *
 * The target registers NBLOCKS blocks of 64 bytes (zero), connects an RC
 * QP with the writer (ids exchanged over TCP) and then only computes: it
 * never calls a verb again and never looks at the blocks until the writer
 * says over TCP that it is done (`done N`, sent once the writer has polled
 * the completion of every write). Then it checks that every block holds
 * its sequence-numbered pattern. The writer writes block i (eight words
 * derived from i) into the target's block i with RDMA WRITE, computing each
 * block's data first (its pace), posting bursts of BURST writes of which
 * one is signaled (unsignaled tails, as perftest's CQ moderation leaves),
 * keeping up to WINDOW in flight. Prints `progress I` every 5,000
 * acknowledged writes. Exit 1 on any error or a block not as written. */
#include <arpa/inet.h>
#include <infiniband/verbs.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WORDS 8
#define WINDOW 48     /* writes in flight at most */
#define BURST 12      /* writes posted in one chain */
#define SIGNALED_AT 7 /* the one signaled write of a burst */
#define GEN_ROUNDS 20000 /* work to make a block's data: the writer's pace */

struct ids {
  uint32_t qpn, psn, rkey, lid;
  uint64_t addr;
};

static void die(const char *what) {
  printf("FAILED: %s\n", what);
  fflush(stdout);
  exit(1);
}

static uint64_t pattern(uint64_t blk, uint64_t w) {
  return (blk + 1) * 0x9e3779b97f4a7c15ull ^ (w << 56) ^ 0xabcdef;
}

static void full_io(int fd, void *buf, size_t n, int wr) {
  char *p = buf;
  while (n) {
    ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
    if (k <= 0) die(wr ? "tcp write" : "tcp read");
    p += k;
    n -= (size_t)k;
  }
}

static struct ibv_context *ctx;
static struct ibv_pd *pd;
static struct ibv_cq *cq;
static struct ibv_qp *qp;

static void setup(void) {
  int n;
  struct ibv_device **l = ibv_get_device_list(&n);
  if (!l || n < 1) die("no device");
  ctx = ibv_open_device(l[0]);
  if (!ctx) die("ibv_open_device");
  pd = ibv_alloc_pd(ctx);
  cq = ibv_create_cq(ctx, 2 * WINDOW, NULL, NULL, 0);
  if (!pd || !cq) die("pd/cq");
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = cq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = WINDOW;
  a.cap.max_recv_wr = 1;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  qp = ibv_create_qp(pd, &a);
  if (!qp) die("ibv_create_qp");
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_INIT;
  m.port_num = 1;
  m.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                                IBV_QP_ACCESS_FLAGS))
    die("INIT");
}

static void connect_qp(struct ids *me, struct ids *peer) {
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTR;
  m.path_mtu = IBV_MTU_1024;
  m.dest_qp_num = peer->qpn;
  m.rq_psn = peer->psn;
  m.max_dest_rd_atomic = 1;
  m.min_rnr_timer = 12;
  m.ah_attr.dlid = (uint16_t)peer->lid;
  m.ah_attr.port_num = 1;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
                                IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC |
                                IBV_QP_MIN_RNR_TIMER))
    die("RTR");
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTS;
  m.timeout = 14;
  m.retry_cnt = 7;
  m.rnr_retry = 7;
  m.sq_psn = me->psn;
  m.max_rd_atomic = 1;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                                IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC))
    die("RTS");
}

static void my_ids(struct ids *me) {
  struct ibv_port_attr pa;
  if (ibv_query_port(ctx, 1, &pa)) die("ibv_query_port");
  me->lid = pa.lid;
  me->qpn = qp->qp_num;
  me->psn = (uint32_t)(getpid() * 7919) & 0xffffff;
}

/* Busy work the target does instead of looking at its memory: a chain of
 * multiply-xorshift steps, checked for the done message every 2^22 steps. */
static int target(int port, uint64_t nblk) {
  setup();
  size_t len = nblk * WORDS * 8;
  uint64_t *blk = aligned_alloc(4096, (len + 4095) / 4096 * 4096);
  if (!blk) die("alloc");
  memset(blk, 0, len);
  struct ibv_mr *mr = ibv_reg_mr(pd, blk, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  if (!mr) die("ibv_reg_mr");
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  if (bind(ls, (struct sockaddr *)&sa, sizeof sa) || listen(ls, 1)) die("bind/listen");
  int fd = accept(ls, NULL, NULL);
  if (fd < 0) die("accept");
  close(ls);
  struct ids me, peer;
  my_ids(&me);
  me.rkey = mr->rkey;
  me.addr = (uintptr_t)blk;
  full_io(fd, &peer, sizeof peer, 0);
  full_io(fd, &me, sizeof me, 1);
  connect_qp(&me, &peer);
  full_io(fd, &me, 1, 1); /* ready */
  printf("target: computing\n");
  fflush(stdout);
  uint64_t x = 88172645463325252ull, steps = 0;
  for (;;) {
    for (int i = 0; i < (1 << 22); i++) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      x *= 0x2545f4914f6cdd1dull;
    }
    steps += 1 << 22;
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 0) == 1) break;
  }
  uint64_t done;
  full_io(fd, &done, sizeof done, 0);
  if (done != nblk) die("the writer did not write every block");
  for (uint64_t b = 0; b < nblk; b++)
    for (int w = 0; w < WORDS; w++)
      if (blk[b * WORDS + w] != pattern(b, (uint64_t)w)) {
        printf("FAILED: block %" PRIu64 " word %d: 0x%" PRIx64 ", written 0x%" PRIx64 "\n",
               b, w, blk[b * WORDS + w], pattern(b, (uint64_t)w));
        return 1;
      }
  printf("target: ok %" PRIu64 " blocks checked after %" PRIu64 " compute steps (0x%" PRIx64
         ")\n", nblk, steps, x);
  full_io(fd, &done, sizeof done, 1);
  return 0;
}

static int writer(const char *host, int port, uint64_t nblk) {
  setup();
  /* A source block per target block: each write's data stays untouched
   * until the end. */
  size_t len = nblk * WORDS * 8;
  uint64_t *src = aligned_alloc(4096, (len + 4095) / 4096 * 4096);
  if (!src) die("alloc");
  for (uint64_t b = 0; b < nblk; b++)
    for (int w = 0; w < WORDS; w++) src[b * WORDS + w] = pattern(b, (uint64_t)w);
  struct ibv_mr *mr = ibv_reg_mr(pd, src, len, IBV_ACCESS_LOCAL_WRITE);
  if (!mr) die("ibv_reg_mr");
  struct addrinfo *ai;
  char ps[16];
  snprintf(ps, sizeof ps, "%d", port);
  if (getaddrinfo(host, ps, NULL, &ai)) die("getaddrinfo");
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(fd, ai->ai_addr, ai->ai_addrlen)) die("connect");
  struct ids me, peer;
  my_ids(&me);
  full_io(fd, &me, sizeof me, 1);
  full_io(fd, &peer, sizeof peer, 0);
  connect_qp(&me, &peer);
  char r;
  full_io(fd, &r, 1, 0);
  printf("writer: connected\n");
  fflush(stdout);
  uint64_t posted = 0, acked = 0, gen = 0x1234;
  struct ibv_wc wc[16];
  while (acked < nblk) {
    if (posted < nblk && posted - acked + BURST <= WINDOW) {
      /* Compute the data of the next burst, then post it: one chain whose
       * 8th write only is signaled (and the very last write of the run),
       * so a burst leaves an unsignaled tail of 4 on the QP. */
      uint64_t n = nblk - posted < BURST ? nblk - posted : BURST;
      for (uint64_t b = posted; b < posted + n; b++) {
        for (int k = 0; k < GEN_ROUNDS; k++) {
          gen ^= gen << 13;
          gen ^= gen >> 7;
          gen ^= gen << 17;
        }
        for (int w = 0; w < WORDS; w++) src[b * WORDS + w] = pattern(b, (uint64_t)w);
      }
      struct ibv_sge sg[BURST];
      struct ibv_send_wr w[BURST], *bad;
      memset(w, 0, sizeof w);
      for (uint64_t i = 0; i < n; i++) {
        uint64_t b = posted + i;
        sg[i].addr = (uintptr_t)(src + b * WORDS);
        sg[i].length = WORDS * 8;
        sg[i].lkey = mr->lkey;
        w[i].wr_id = b;
        w[i].sg_list = &sg[i];
        w[i].num_sge = 1;
        w[i].opcode = IBV_WR_RDMA_WRITE;
        w[i].send_flags = (i == SIGNALED_AT || b + 1 == nblk) ? IBV_SEND_SIGNALED : 0;
        w[i].wr.rdma.remote_addr = peer.addr + b * WORDS * 8;
        w[i].wr.rdma.rkey = peer.rkey;
        w[i].next = i + 1 < n ? &w[i + 1] : NULL;
      }
      if (ibv_post_send(qp, w, &bad)) die("ibv_post_send");
      posted += n;
    }
    int k = ibv_poll_cq(cq, 16, wc);
    if (k < 0) die("ibv_poll_cq");
    for (int i = 0; i < k; i++) {
      if (wc[i].status != IBV_WC_SUCCESS) {
        printf("FAILED: write %" PRIu64 ": %s\n", wc[i].wr_id, ibv_wc_status_str(wc[i].status));
        return 1;
      }
      if (wc[i].wr_id + 1 <= acked || wc[i].wr_id >= posted) die("completion out of order");
      uint64_t before = acked;
      acked = wc[i].wr_id + 1; /* sends complete in order: all before it ran */
      if (acked / 5000 != before / 5000) {
        printf("progress %" PRIu64 "\n", acked / 5000 * 5000);
        fflush(stdout);
      }
    }
  }
  printf("writer: all %" PRIu64 " written (0x%" PRIx64 ")\n", acked, gen);
  fflush(stdout);
  full_io(fd, &acked, sizeof acked, 1);
  uint64_t bye;
  full_io(fd, &bye, sizeof bye, 0);
  printf("writer: ok %" PRIu64 " writes acknowledged\n", acked);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "target"))
    return target(atoi(argv[2]), strtoull(argv[3], NULL, 10));
  if (argc == 5 && !strcmp(argv[1], "writer"))
    return writer(argv[2], atoi(argv[3]), strtoull(argv[4], NULL, 10));
  fprintf(stderr, "usage: write_busy target PORT NBLOCKS | writer HOST PORT NBLOCKS\n");
  return 2;
}
