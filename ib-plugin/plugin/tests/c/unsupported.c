/* What the InfiniBand plugin does not virtualize must be refused with an
 * error the program sees (EOPNOTSUPP), not crash or half-work. Prints one
 * line per feature; exits 0 only if every one was refused that way and the
 * supported path (a plain RC QP) still works. */
#include <errno.h>
#include <infiniband/verbs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad = 0;

static void refused(const char *what, int ok, int err) {
  if (ok && err == EOPNOTSUPP) {
    printf("refused %s: EOPNOTSUPP\n", what);
  } else {
    printf("NOT REFUSED %s (errno %d %s)\n", what, err, strerror(err));
    bad = 1;
  }
}

int main(void) {
  int n;
  struct ibv_device **list = ibv_get_device_list(&n);
  if (!list || n < 1) { printf("no device\n"); return 2; }
  struct ibv_context *ctx = ibv_open_device(list[0]);
  if (!ctx) { printf("open failed\n"); return 2; }
  struct ibv_pd *pd = ibv_alloc_pd(ctx);
  struct ibv_cq *cq = ibv_create_cq(ctx, 16, NULL, NULL, 0);
  static char buf[8192];
  if (!pd || !cq) { printf("pd/cq failed\n"); return 2; }

  /* Extended QP with the ibv_wr_* send builders. */
  struct ibv_qp_init_attr_ex ax;
  memset(&ax, 0, sizeof ax);
  ax.qp_type = IBV_QPT_RC;
  ax.send_cq = ax.recv_cq = cq;
  ax.cap.max_send_wr = ax.cap.max_recv_wr = 4;
  ax.cap.max_send_sge = ax.cap.max_recv_sge = 1;
  ax.comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS;
  ax.pd = pd;
  ax.send_ops_flags = IBV_QP_EX_WITH_RDMA_WRITE | IBV_QP_EX_WITH_SEND;
  errno = 0;
  struct ibv_qp *qx = ibv_create_qp_ex(ctx, &ax);
  refused("ibv_create_qp_ex with send_ops_flags", qx == NULL, errno);

  /* XRC domain. */
  struct ibv_xrcd_init_attr xa;
  memset(&xa, 0, sizeof xa);
  xa.comp_mask = IBV_XRCD_INIT_ATTR_FD | IBV_XRCD_INIT_ATTR_OFLAGS;
  xa.fd = -1;
  errno = 0;
  struct ibv_xrcd *x = ibv_open_xrcd(ctx, &xa);
  refused("ibv_open_xrcd", x == NULL, errno);

  /* Memory windows. */
  errno = 0;
  struct ibv_mw *mw = ibv_alloc_mw(pd, IBV_MW_TYPE_1);
  refused("ibv_alloc_mw", mw == NULL, errno);
  errno = 0;
  struct ibv_mr *m1 = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_MW_BIND);
  refused("ibv_reg_mr with IBV_ACCESS_MW_BIND", m1 == NULL, errno);

  /* On-demand paging. */
  errno = 0;
  struct ibv_mr *m2 = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_ON_DEMAND);
  refused("ibv_reg_mr with IBV_ACCESS_ON_DEMAND", m2 == NULL, errno);

  /* Extended CQ. */
  struct ibv_cq_init_attr_ex cx;
  memset(&cx, 0, sizeof cx);
  cx.cqe = 16;
  cx.wc_flags = IBV_WC_EX_WITH_COMPLETION_TIMESTAMP;
  errno = 0;
  struct ibv_cq_ex *ce = ibv_create_cq_ex(ctx, &cx);
  refused("ibv_create_cq_ex", ce == NULL, errno);

  /* Multicast. */
  union ibv_gid g;
  memset(&g, 0, sizeof g);
  struct ibv_qp_init_attr ua;
  memset(&ua, 0, sizeof ua);
  ua.qp_type = IBV_QPT_UD;
  ua.send_cq = ua.recv_cq = cq;
  ua.cap.max_send_wr = ua.cap.max_recv_wr = 4;
  ua.cap.max_send_sge = ua.cap.max_recv_sge = 1;
  struct ibv_qp *uq = ibv_create_qp(pd, &ua);
  if (!uq) { printf("UD QP failed\n"); return 2; }
  int r = ibv_attach_mcast(uq, &g, 0xc001);
  refused("ibv_attach_mcast", r != 0, r);

  /* The supported path still works. */
  struct ibv_qp_init_attr ra = ua;
  ra.qp_type = IBV_QPT_RC;
  struct ibv_qp *rq = ibv_create_qp(pd, &ra);
  struct ibv_mr *mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
  if (!rq || !mr) { printf("NOT WORKING: plain RC QP or MR\n"); bad = 1; }
  else printf("plain RC QP 0x%x and MR lkey 0x%x: ok\n", rq->qp_num, mr->lkey);
  printf(bad ? "FAILED\n" : "all refused\n");
  return bad;
}
