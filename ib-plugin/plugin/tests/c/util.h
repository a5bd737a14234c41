/* Helpers of the test programs: each defines `die` (print what failed,
 * exit 1) before including this. */
#include <infiniband/verbs.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what);

/* Reads or writes exactly n bytes of fd (a socketpair to the other process). */
static void io(int fd, void *b, size_t n, int wr) {
  char *p = b;
  while (n) {
    ssize_t k = wr ? write(fd, p, n) : read(fd, p, n);
    if (k <= 0) die("socketpair i/o");
    p += k;
    n -= (size_t)k;
  }
}

/* Monotonic seconds. */
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Forks; parent and child keep one end each of a socketpair. Returns this
 * side's end; *pid is fork's result (0 in the child). */
static inline int fork_pair(pid_t *pid) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) die("socketpair");
  *pid = fork();
  if (*pid < 0) die("fork");
  close(*pid ? sv[1] : sv[0]);
  return *pid ? sv[0] : sv[1];
}

/* Opens the first device, a PD on it and a CQ of `cqe` entries. */
static inline void open_first(int cqe, struct ibv_context **ctx, struct ibv_pd **pd,
                              struct ibv_cq **cq) {
  int nd;
  struct ibv_device **l = ibv_get_device_list(&nd);
  if (!l || nd < 1) die("no device");
  *ctx = ibv_open_device(l[0]);
  *pd = *ctx ? ibv_alloc_pd(*ctx) : NULL;
  *cq = *ctx ? ibv_create_cq(*ctx, cqe, NULL, NULL, 0) : NULL;
  if (!*pd || !*cq) die("open/pd/cq");
}

/* An RC QP on port 1 in INIT, both queues on `cq`, `depth` WRs of one SGE
 * each (receives from `srq` when it is not NULL). */
static inline struct ibv_qp *rc_qp(struct ibv_pd *pd, struct ibv_cq *cq, struct ibv_srq *srq,
                                   uint32_t depth) {
  struct ibv_qp_init_attr a;
  memset(&a, 0, sizeof a);
  a.send_cq = a.recv_cq = cq;
  a.srq = srq;
  a.qp_type = IBV_QPT_RC;
  a.cap.max_send_wr = depth;
  a.cap.max_recv_wr = srq ? 0 : depth;
  a.cap.max_send_sge = a.cap.max_recv_sge = 1;
  struct ibv_qp *qp = ibv_create_qp(pd, &a);
  if (!qp) die("create_qp");
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_INIT;
  m.port_num = 1;
  if (ibv_modify_qp(qp, &m, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
    die("INIT");
  return qp;
}

/* Connects an RC QP in INIT to QP `qpn` at `lid` (RTR, then RTS): PSN 7
 * both ways, rnr_retry 7 (a send waiting for a receive retries for ever). */
static inline void rc_to_rts(struct ibv_qp *qp, uint32_t qpn, uint32_t lid) {
  struct ibv_qp_attr m;
  memset(&m, 0, sizeof m);
  m.qp_state = IBV_QPS_RTR;
  m.path_mtu = IBV_MTU_1024;
  m.dest_qp_num = qpn;
  m.rq_psn = 7;
  m.max_dest_rd_atomic = 1;
  m.min_rnr_timer = 12;
  m.ah_attr.dlid = (uint16_t)lid;
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
}
