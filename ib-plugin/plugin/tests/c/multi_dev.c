/* Several HCAs in one process: `multi_dev NDEV ITERS`.
 *
 * Opens the devices softib0 .. softib<NDEV-1> (each its own context, PD,
 * CQ and port LID) and makes RC queue pairs: on each device a loopback
 * pair (both QPs on that device), and between each device and the next one
 * a pair whose sender is on one device and receiver on the other. Every
 * iteration, on every pair, the sender RDMA-WRITEs a block of sequence-
 * numbered words into the receiver's memory (unsignaled) and then SENDs a
 * small message naming the iteration; the receiver checks the message, the
 * whole block (RC: the write landed before the send), the completion's
 * `qp_num` and `slid` (the sending device's LID, as the program learnt it
 * at the start) and that each context's device still has its name. The
 * `slid` and the device name tell whether each device's objects came back
 * on their own device after a restart. Before the pairs, one MR is
 * registered on the first device and deregistered: where a device numbers
 * its rkeys in order (mlx5; softib with SOFTIB_RKEYS=per-device), equal
 * rkeys of two devices then name MRs whose new rkeys differ after a
 * restart (the restart does not register the one gone). Prints how many
 * rkeys two devices share (`rkeys shared by two devices: N`), `progress I`
 * every 500 iterations, `ok ... checksum X` at the end; exit 1 on any
 * mismatch. */
#include <infiniband/verbs.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXDEV 4
#define BLK 512 /* 64-bit words in a written block */
#define SLOTS 4 /* blocks per receiver, and receives posted ahead */

struct dev {
  char name[32];
  struct ibv_context *ctx;
  struct ibv_pd *pd;
  struct ibv_cq *cq;
  uint16_t lid;
};

struct msg {
  uint64_t iter, pair, sum;
};

struct pair {
  struct dev *sd, *rd;
  struct ibv_qp *s, *r;
  uint64_t *sblk;      /* sender: the block it writes */
  struct msg *smsg;    /* sender: the message it sends */
  uint64_t *wbuf;      /* receiver: SLOTS blocks written into */
  struct msg *rmsg;    /* receiver: SLOTS receive buffers */
  struct ibv_mr *sblk_mr, *smsg_mr, *wbuf_mr, *rmsg_mr;
  int sent, got;
};

static void die(const char *what) {
  printf("FAILED: %s\n", what);
  fflush(stdout);
  exit(1);
}

static uint64_t pattern(uint64_t pair, uint64_t iter, uint64_t w) {
  return (pair << 56) ^ (iter * 0x9e3779b97f4a7c15ull) ^ (w * 0x100000001b3ull) ^ 0x5eed;
}

static void *mem(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 4096, n)) die("posix_memalign");
  memset(p, 0, n);
  return p;
}

static struct ibv_mr *reg(struct dev *d, void *p, size_t n) {
  struct ibv_mr *mr = ibv_reg_mr(d->pd, p, n,
                                 IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  if (!mr) die("ibv_reg_mr");
  return mr;
}

static struct ibv_qp *qp(struct dev *d) {
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = d->cq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = 2 * SLOTS;
  a.cap.max_recv_wr = SLOTS;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  struct ibv_qp *q = ibv_create_qp(d->pd, &a);
  if (!q) die("ibv_create_qp");
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_INIT;
  m.port_num = 1;
  m.qp_access_flags = IBV_ACCESS_REMOTE_WRITE;
  if (ibv_modify_qp(q, &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT |
                               IBV_QP_ACCESS_FLAGS))
    die("modify to INIT");
  return q;
}

static void connect_qp(struct ibv_qp *q, uint16_t dlid, uint32_t dqpn,
                       uint32_t rpsn, uint32_t spsn) {
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTR;
  m.path_mtu = IBV_MTU_1024;
  m.dest_qp_num = dqpn;
  m.rq_psn = rpsn;
  m.max_dest_rd_atomic = 1;
  m.min_rnr_timer = 12;
  m.ah_attr.dlid = dlid;
  m.ah_attr.port_num = 1;
  if (ibv_modify_qp(q, &m, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU |
                               IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                               IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
    die("modify to RTR");
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTS;
  m.timeout = 14;
  m.retry_cnt = 7;
  m.rnr_retry = 7;
  m.sq_psn = spsn;
  m.max_rd_atomic = 1;
  if (ibv_modify_qp(q, &m, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT |
                               IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                               IBV_QP_MAX_QP_RD_ATOMIC))
    die("modify to RTS");
}

static struct pair *pairs;
static int npairs;

static void post_recv_slot(int pi, int slot) {
  struct pair *p = &pairs[pi];
  struct ibv_sge sg = {(uintptr_t)&p->rmsg[slot], sizeof(struct msg), p->rmsg_mr->lkey};
  struct ibv_recv_wr w, *bad;
  memset(&w, 0, sizeof w);
  w.wr_id = ((uint64_t)pi << 8) | (uint64_t)slot;
  w.sg_list = &sg;
  w.num_sge = 1;
  if (ibv_post_recv(p->r, &w, &bad)) die("ibv_post_recv");
}

static void post_iter(int pi, uint64_t it) {
  struct pair *p = &pairs[pi];
  int slot = (int)(it % SLOTS);
  for (int w = 0; w < BLK; w++) p->sblk[w] = pattern((uint64_t)pi, it, (uint64_t)w);
  p->smsg->iter = it;
  p->smsg->pair = (uint64_t)pi;
  p->smsg->sum = p->sblk[0] ^ p->sblk[BLK - 1];
  struct ibv_sge s1 = {(uintptr_t)p->sblk, BLK * 8, p->sblk_mr->lkey};
  struct ibv_sge s2 = {(uintptr_t)p->smsg, sizeof(struct msg), p->smsg_mr->lkey};
  struct ibv_send_wr w2, w1, *bad;
  memset(&w1, 0, sizeof w1);
  memset(&w2, 0, sizeof w2);
  w1.wr_id = 1;
  w1.sg_list = &s1;
  w1.num_sge = 1;
  w1.opcode = IBV_WR_RDMA_WRITE;
  w1.wr.rdma.remote_addr = (uintptr_t)(p->wbuf + (size_t)slot * BLK);
  w1.wr.rdma.rkey = p->wbuf_mr->rkey;
  w1.next = &w2;
  w2.wr_id = (1ull << 62) | (uint64_t)pi;
  w2.sg_list = &s2;
  w2.num_sge = 1;
  w2.opcode = IBV_WR_SEND;
  w2.send_flags = IBV_SEND_SIGNALED;
  if (ibv_post_send(p->s, &w1, &bad)) die("ibv_post_send");
}

int main(int argc, char **argv) {
  int ndev = argc > 1 ? atoi(argv[1]) : 2;
  uint64_t iters = argc > 2 ? strtoull(argv[2], NULL, 10) : 10000;
  if (ndev < 2 || ndev > MAXDEV) die("NDEV must be 2..4");
  struct dev devs[MAXDEV];
  int n;
  struct ibv_device **list = ibv_get_device_list(&n);
  if (!list) die("ibv_get_device_list");
  for (int d = 0; d < ndev; d++) {
    snprintf(devs[d].name, sizeof devs[d].name, "softib%d", d);
    struct ibv_device *dv = NULL;
    for (int i = 0; i < n; i++)
      if (!strcmp(ibv_get_device_name(list[i]), devs[d].name)) dv = list[i];
    if (!dv) die("device not found (run the service with --devices N)");
    devs[d].ctx = ibv_open_device(dv);
    if (!devs[d].ctx) die("ibv_open_device");
    devs[d].pd = ibv_alloc_pd(devs[d].ctx);
    devs[d].cq = ibv_create_cq(devs[d].ctx, 8 * SLOTS * 4, NULL, NULL, 0);
    if (!devs[d].pd || !devs[d].cq) die("pd/cq");
    struct ibv_port_attr pa;
    if (ibv_query_port(devs[d].ctx, 1, &pa)) die("ibv_query_port");
    devs[d].lid = pa.lid;
    printf("device %s lid 0x%x\n", devs[d].name, devs[d].lid);
  }
  ibv_free_device_list(list);
  for (int d = 0; d < ndev; d++)
    for (int e = d + 1; e < ndev; e++)
      if (devs[d].lid == devs[e].lid) die("two devices with one LID");
  {
    void *scratch = mem(4096);
    if (ibv_dereg_mr(reg(&devs[0], scratch, 4096))) die("ibv_dereg_mr");
    free(scratch);
  }

  /* A loopback pair on each device, then device d -> d+1 (and the last to the first). */
  npairs = 2 * ndev;
  pairs = calloc((size_t)npairs, sizeof *pairs);
  for (int pi = 0; pi < npairs; pi++) {
    struct pair *p = &pairs[pi];
    p->sd = &devs[pi % ndev];
    p->rd = pi < ndev ? p->sd : &devs[(pi + 1) % ndev];
    p->s = qp(p->sd);
    p->r = qp(p->rd);
    p->sblk = mem(BLK * 8);
    p->smsg = mem(4096);
    p->wbuf = mem((size_t)SLOTS * BLK * 8);
    p->rmsg = mem(4096);
    p->sblk_mr = reg(p->sd, p->sblk, BLK * 8);
    p->smsg_mr = reg(p->sd, p->smsg, sizeof(struct msg));
    p->wbuf_mr = reg(p->rd, p->wbuf, (size_t)SLOTS * BLK * 8);
    p->rmsg_mr = reg(p->rd, p->rmsg, SLOTS * sizeof(struct msg));
    uint32_t psn1 = (uint32_t)(lrand48() & 0xffffff), psn2 = (uint32_t)(lrand48() & 0xffffff);
    connect_qp(p->s, p->rd->lid, p->r->qp_num, psn2, psn1);
    connect_qp(p->r, p->sd->lid, p->s->qp_num, psn1, psn2);
    for (int s = 0; s < SLOTS; s++) post_recv_slot(pi, s);
    printf("pair %d: %s QP 0x%x -> %s QP 0x%x\n", pi, p->sd->name, p->s->qp_num,
           p->rd->name, p->r->qp_num);
  }
  int shared = 0;
  for (int a = 0; a < 4 * npairs; a++)
    for (int b = a + 1; b < 4 * npairs; b++) {
      struct pair *pa = &pairs[a / 4], *pb = &pairs[b / 4];
      struct ibv_mr *ma = (&pa->sblk_mr)[a % 4], *mb = (&pb->sblk_mr)[b % 4];
      if (ma->context != mb->context && ma->rkey == mb->rkey) shared++;
    }
  printf("rkeys shared by two devices: %d\n", shared);
  fflush(stdout);

  uint64_t sum = 0;
  struct ibv_wc wc[16];
  for (uint64_t it = 0; it < iters; it++) {
    for (int pi = 0; pi < npairs; pi++) {
      pairs[pi].sent = pairs[pi].got = 0;
      post_iter(pi, it);
    }
    int left = 2 * npairs;
    while (left > 0) {
      for (int d = 0; d < ndev; d++) {
        int k = ibv_poll_cq(devs[d].cq, 16, wc);
        if (k < 0) die("ibv_poll_cq");
        for (int i = 0; i < k; i++) {
          if (wc[i].status != IBV_WC_SUCCESS) {
            printf("FAILED: completion %s (wr_id 0x%" PRIx64 ", iteration %" PRIu64 ")\n",
                   ibv_wc_status_str(wc[i].status), wc[i].wr_id, it);
            return 1;
          }
          if (wc[i].wr_id >> 62) {
            struct pair *p = &pairs[wc[i].wr_id & 0xff];
            if (p->sd != &devs[d] || wc[i].qp_num != p->s->qp_num || p->sent)
              die("send completion on the wrong CQ or QP");
            p->sent = 1;
            left--;
            continue;
          }
          int pi = (int)(wc[i].wr_id >> 8), slot = (int)(wc[i].wr_id & 0xff);
          if (pi >= npairs || slot != (int)(it % SLOTS)) die("unexpected receive wr_id");
          struct pair *p = &pairs[pi];
          if (p->rd != &devs[d] || wc[i].qp_num != p->r->qp_num)
            die("receive completion on the wrong CQ or QP");
          if (wc[i].opcode != IBV_WC_RECV || wc[i].byte_len != sizeof(struct msg))
            die("receive completion of the wrong kind");
          if (wc[i].slid != p->sd->lid) {
            printf("FAILED: pair %d: message from LID 0x%x, the sender's device %s has 0x%x\n",
                   pi, wc[i].slid, p->sd->name, p->sd->lid);
            return 1;
          }
          struct msg *m = &p->rmsg[slot];
          if (m->iter != it || m->pair != (uint64_t)pi) {
            printf("FAILED: pair %d: message of iteration %" PRIu64 " pair %" PRIu64
                   ", expected %" PRIu64 "\n", pi, m->iter, m->pair, it);
            return 1;
          }
          uint64_t *b = p->wbuf + (size_t)slot * BLK;
          for (int w = 0; w < BLK; w++) {
            if (b[w] != pattern((uint64_t)pi, it, (uint64_t)w)) {
              printf("FAILED: pair %d iteration %" PRIu64 " word %d: 0x%" PRIx64
                     ", written 0x%" PRIx64 "\n", pi, it, w, b[w],
                     pattern((uint64_t)pi, it, (uint64_t)w));
              return 1;
            }
            sum = sum * 31 + b[w];
          }
          if (m->sum != (b[0] ^ b[BLK - 1])) die("message sum");
          p->got = 1;
          left--;
          post_recv_slot(pi, slot);
        }
      }
    }
    if ((it + 1) % 500 == 0) {
      for (int d = 0; d < ndev; d++)
        if (strcmp(ibv_get_device_name(devs[d].ctx->device), devs[d].name))
          die("a context's device changed its name");
      printf("progress %" PRIu64 "\n", it + 1);
      fflush(stdout);
    }
  }
  printf("ok %d devices, %d pairs, %" PRIu64 " iterations, checksum %016" PRIx64 "\n", ndev,
         npairs, iters, sum);
  return 0;
}
