/* verbs_check: exercises the software device through the plain verbs API
 * the way real programs use it, and checks what real hardware gives:
 *   - one-sided RDMA WRITE / READ and atomics complete while the target
 *     process is stopped (SIGSTOP): it runs no code, the device does the work;
 *   - error completions: bad rkey -> REM_ACCESS_ERR and the QP's later work
 *     requests flushed; a send with no receive posted and rnr_retry 0 ->
 *     RNR_RETRY_EXC_ERR; a message longer than the receive buffer;
 *   - immediate errors: bad QP transitions, bad access flags, posting on a
 *     QP in RESET, too many SGEs, destroying objects still in use.
 * Prints "verbs_check: ok" and exits 0 when everything held. */
#define _GNU_SOURCE
#include <infiniband/verbs.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(c, ...) do { if (!(c)) { fprintf(stderr, "verbs_check: line %d: ", __LINE__); fprintf(stderr, __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } } while (0)

struct peer { uint32_t qpn; uint16_t lid; uint64_t addr; uint32_t rkey; };

struct end {
	struct ibv_context *ctx; struct ibv_pd *pd; struct ibv_cq *cq; struct ibv_qp *qp;
	struct ibv_mr *mr; char *buf; size_t len; uint16_t lid;
};

static void open_end(struct end *e, size_t len, int access, int qpt) {
	int n;
	struct ibv_device **l = ibv_get_device_list(&n);
	CHECK(l && n > 0, "no device");
	e->ctx = ibv_open_device(l[0]);
	CHECK(e->ctx, "open_device: %s", strerror(errno));
	ibv_free_device_list(l);
	struct ibv_port_attr pa;
	CHECK(ibv_query_port(e->ctx, 1, &pa) == 0, "query_port");
	e->lid = pa.lid;
	e->pd = ibv_alloc_pd(e->ctx);
	e->cq = ibv_create_cq(e->ctx, 64, NULL, NULL, 0);
	CHECK(e->pd && e->cq, "pd/cq");
	e->len = len;
	e->buf = aligned_alloc(4096, len);
	memset(e->buf, 0, len);
	e->mr = ibv_reg_mr(e->pd, e->buf, len, access);
	CHECK(e->mr, "reg_mr: %s", strerror(errno));
	struct ibv_qp_init_attr ia = { .send_cq = e->cq, .recv_cq = e->cq, .qp_type = qpt,
		.cap = { .max_send_wr = 32, .max_recv_wr = 32, .max_send_sge = 2, .max_recv_sge = 2 } };
	e->qp = ibv_create_qp(e->pd, &ia);
	CHECK(e->qp, "create_qp: %s", strerror(errno));
}

static void connect_qp(struct end *e, struct peer *p, int rnr_retry) {
	struct ibv_qp_attr a = { .qp_state = IBV_QPS_INIT, .pkey_index = 0, .port_num = 1,
		.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC };
	CHECK(ibv_modify_qp(e->qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS) == 0, "INIT");
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTR; a.path_mtu = IBV_MTU_1024; a.dest_qp_num = p->qpn; a.rq_psn = 0;
	a.max_dest_rd_atomic = 4; a.min_rnr_timer = 1; a.ah_attr.dlid = p->lid; a.ah_attr.port_num = 1;
	CHECK(ibv_modify_qp(e->qp, &a, IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN |
		IBV_QP_RQ_PSN | IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER) == 0, "RTR");
	memset(&a, 0, sizeof a);
	a.qp_state = IBV_QPS_RTS; a.timeout = 14; a.retry_cnt = 7; a.rnr_retry = rnr_retry; a.sq_psn = 0; a.max_rd_atomic = 4;
	CHECK(ibv_modify_qp(e->qp, &a, IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
		IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC) == 0, "RTS");
}

static struct ibv_wc wait_wc(struct end *e) {
	struct ibv_wc wc;
	for (long spins = 0;; spins++) {
		int n = ibv_poll_cq(e->cq, 1, &wc);
		CHECK(n >= 0, "poll_cq");
		if (n == 1) return wc;
		if (spins > 200000) usleep(100);
		CHECK(spins < 400000, "no completion");
	}
}

static void post(struct end *e, enum ibv_wr_opcode op, uint64_t laddr, uint32_t len, uint64_t raddr, uint32_t rkey,
		 uint64_t cmp, uint64_t swap, uint64_t id) {
	struct ibv_sge sge = { .addr = laddr, .length = len, .lkey = e->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = id, .sg_list = &sge, .num_sge = 1, .opcode = op, .send_flags = IBV_SEND_SIGNALED }, *bad;
	if (op == IBV_WR_ATOMIC_CMP_AND_SWP || op == IBV_WR_ATOMIC_FETCH_AND_ADD) {
		wr.wr.atomic.remote_addr = raddr; wr.wr.atomic.rkey = rkey; wr.wr.atomic.compare_add = cmp; wr.wr.atomic.swap = swap;
	} else {
		wr.wr.rdma.remote_addr = raddr; wr.wr.rdma.rkey = rkey;
	}
	CHECK(ibv_post_send(e->qp, &wr, &bad) == 0, "post_send op %d", op);
}

static char state_of(pid_t pid) {
	char path[64], buf[512];
	snprintf(path, sizeof path, "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f) return '?';
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] ? p[2] : '?';
}

/* The target: a separate process whose memory is written, read and
 * updated by atomics while it is stopped. */
static void one_sided(void) {
	int up[2], down[2];
	CHECK(pipe(up) == 0 && pipe(down) == 0, "pipe");
	pid_t child = fork();
	CHECK(child >= 0, "fork");
	if (child == 0) {
		struct end t;
		open_end(&t, 1 << 20, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC, IBV_QPT_RC);
		for (size_t i = 0; i < t.len; i++) t.buf[i] = (char)(i * 7);
		struct peer me = { t.qp->qp_num, t.lid, (uintptr_t)t.buf, t.mr->rkey }, them;
		CHECK(write(up[1], &me, sizeof me) == sizeof me, "write");
		CHECK(read(down[0], &them, sizeof them) == sizeof them, "read");
		connect_qp(&t, &them, 7);
		CHECK(write(up[1], "r", 1) == 1, "write");
		raise(SIGSTOP);
		/* Resumed: the initiator is done. Check what the device wrote. */
		for (size_t i = 0; i < 65536; i++)
			CHECK(t.buf[i] == (char)(i * 13 + 1), "byte %zu of the RDMA write: %d", i, t.buf[i]);
		uint64_t *w = (uint64_t *)(t.buf + 131072);
		CHECK(w[0] == 1000, "fetch-and-add result %lu", (unsigned long)w[0]);
		CHECK(w[1] == 0xfeed, "compare-and-swap result %lx", (unsigned long)w[1]);
		CHECK(w[2] == 77, "failed compare-and-swap changed memory: %lx", (unsigned long)w[2]);
		_exit(0);
	}
	struct end in;
	open_end(&in, 1 << 20, IBV_ACCESS_LOCAL_WRITE, IBV_QPT_RC);
	struct peer them, me;
	CHECK(read(up[0], &them, sizeof them) == sizeof them, "read");
	me = (struct peer){ in.qp->qp_num, in.lid, 0, 0 };
	CHECK(write(down[1], &me, sizeof me) == sizeof me, "write");
	connect_qp(&in, &them, 7);
	char c;
	CHECK(read(up[0], &c, 1) == 1, "read");
	for (int i = 0; i < 2000 && state_of(child) != 'T'; i++) usleep(1000);
	CHECK(state_of(child) == 'T', "target did not stop");

	/* READ what the target wrote before stopping. */
	post(&in, IBV_WR_RDMA_READ, (uintptr_t)in.buf, 65536, them.addr + 65536, them.rkey, 0, 0, 1);
	struct ibv_wc wc = wait_wc(&in);
	CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_READ && wc.byte_len == 65536, "read: %s", ibv_wc_status_str(wc.status));
	for (size_t i = 0; i < 65536; i++)
		CHECK(in.buf[i] == (char)((i + 65536) * 7), "read byte %zu", i);
	/* WRITE, then READ it back. */
	for (size_t i = 0; i < 65536; i++) in.buf[i] = (char)(i * 13 + 1);
	post(&in, IBV_WR_RDMA_WRITE, (uintptr_t)in.buf, 65536, them.addr, them.rkey, 0, 0, 2);
	wc = wait_wc(&in);
	CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_RDMA_WRITE, "write: %s", ibv_wc_status_str(wc.status));
	post(&in, IBV_WR_RDMA_READ, (uintptr_t)in.buf + 65536, 65536, them.addr, them.rkey, 0, 0, 3);
	wc = wait_wc(&in);
	CHECK(wc.status == IBV_WC_SUCCESS, "read back");
	CHECK(memcmp(in.buf, in.buf + 65536, 65536) == 0, "read back differs from what was written");
	/* Atomics on three words, zeroed first by a write. */
	uint64_t *lw = (uint64_t *)(in.buf + 262144);
	lw[0] = 0; lw[1] = 0x1234; lw[2] = 77;
	post(&in, IBV_WR_RDMA_WRITE, (uintptr_t)lw, 24, them.addr + 131072, them.rkey, 0, 0, 4);
	CHECK(wait_wc(&in).status == IBV_WC_SUCCESS, "write words");
	uint64_t *old = (uint64_t *)(in.buf + 300000 - 300000 % 8);
	for (int i = 0; i < 1000; i++) {
		post(&in, IBV_WR_ATOMIC_FETCH_AND_ADD, (uintptr_t)old, 8, them.addr + 131072, them.rkey, 1, 0, 100 + i);
		wc = wait_wc(&in);
		CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_FETCH_ADD, "faa: %s", ibv_wc_status_str(wc.status));
		CHECK(*old == (uint64_t)i, "fetch-and-add %d returned %lu", i, (unsigned long)*old);
	}
	post(&in, IBV_WR_ATOMIC_CMP_AND_SWP, (uintptr_t)old, 8, them.addr + 131072 + 8, them.rkey, 0x1234, 0xfeed, 5);
	wc = wait_wc(&in);
	CHECK(wc.status == IBV_WC_SUCCESS && wc.opcode == IBV_WC_COMP_SWAP && *old == 0x1234, "cas");
	post(&in, IBV_WR_ATOMIC_CMP_AND_SWP, (uintptr_t)old, 8, them.addr + 131072 + 16, them.rkey, 1, 2, 6);
	wc = wait_wc(&in);
	CHECK(wc.status == IBV_WC_SUCCESS && *old == 77, "failed cas returns the old value");
	CHECK(state_of(child) == 'T', "the target ran while it should have been stopped");

	/* A bad rkey: remote access error, then the QP's next request is flushed. */
	post(&in, IBV_WR_RDMA_WRITE, (uintptr_t)in.buf, 8, them.addr, them.rkey ^ 0x5a5a5a5a, 0, 0, 7);
	post(&in, IBV_WR_RDMA_WRITE, (uintptr_t)in.buf, 8, them.addr, them.rkey, 0, 0, 8);
	wc = wait_wc(&in);
	CHECK(wc.wr_id == 7 && wc.status == IBV_WC_REM_ACCESS_ERR, "bad rkey gave %s", ibv_wc_status_str(wc.status));
	wc = wait_wc(&in);
	CHECK(wc.wr_id == 8 && wc.status == IBV_WC_WR_FLUSH_ERR, "after the error: %s", ibv_wc_status_str(wc.status));
	struct ibv_qp_attr qa; struct ibv_qp_init_attr qi;
	CHECK(ibv_query_qp(in.qp, &qa, IBV_QP_STATE, &qi) == 0 && qa.qp_state == IBV_QPS_ERR, "QP not in error state");

	kill(child, SIGCONT);
	int st;
	CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0, "target's check failed");
}

/* Two QPs of one process: RNR, short receive buffer, immediate errors. */
static void errors(void) {
	struct end a, b;
	open_end(&a, 65536, IBV_ACCESS_LOCAL_WRITE, IBV_QPT_RC);
	open_end(&b, 65536, IBV_ACCESS_LOCAL_WRITE, IBV_QPT_RC);

	/* Posting a send on a QP in RESET fails at once; so does RESET -> RTS. */
	struct ibv_sge sge = { .addr = (uintptr_t)a.buf, .length = 8, .lkey = a.mr->lkey };
	struct ibv_send_wr wr = { .wr_id = 1, .sg_list = &sge, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad = NULL;
	CHECK(ibv_post_send(a.qp, &wr, &bad) != 0 && bad == &wr, "post_send in RESET accepted");
	struct ibv_qp_attr rts = { .qp_state = IBV_QPS_RTS };
	CHECK(ibv_modify_qp(a.qp, &rts, IBV_QP_STATE) != 0, "RESET -> RTS accepted");
	/* Remote write without local write is refused by reg_mr. */
	errno = 0;
	CHECK(ibv_reg_mr(a.pd, a.buf, 4096, IBV_ACCESS_REMOTE_WRITE) == NULL && errno == EINVAL, "bad access flags accepted");
	/* Objects in use cannot be destroyed. */
	CHECK(ibv_dealloc_pd(a.pd) == EBUSY, "PD with a QP and MR deallocated");
	CHECK(ibv_destroy_cq(a.cq) == EBUSY, "CQ with a QP destroyed");

	struct peer pa = { a.qp->qp_num, a.lid, 0, 0 }, pb = { b.qp->qp_num, b.lid, 0, 0 };
	connect_qp(&a, &pb, 0);
	connect_qp(&b, &pa, 0);
	/* Too many SGEs. */
	struct ibv_sge three[3] = { sge, sge, sge };
	wr.sg_list = three; wr.num_sge = 3; bad = NULL;
	CHECK(ibv_post_send(a.qp, &wr, &bad) == EINVAL && bad == &wr, "3 SGEs on a QP of 2 accepted");
	wr.sg_list = &sge; wr.num_sge = 1;
	/* No receive posted, rnr_retry 0: RNR retry exceeded. */
	CHECK(ibv_post_send(a.qp, &wr, &bad) == 0, "post_send");
	struct ibv_wc wc = wait_wc(&a);
	CHECK(wc.status == IBV_WC_RNR_RETRY_EXC_ERR, "send without a receive: %s", ibv_wc_status_str(wc.status));

	/* Fresh pair: a message longer than the receive buffer. */
	struct end c, d;
	open_end(&c, 65536, IBV_ACCESS_LOCAL_WRITE, IBV_QPT_RC);
	open_end(&d, 65536, IBV_ACCESS_LOCAL_WRITE, IBV_QPT_RC);
	struct peer pc = { c.qp->qp_num, c.lid, 0, 0 }, pd = { d.qp->qp_num, d.lid, 0, 0 };
	connect_qp(&c, &pd, 7);
	connect_qp(&d, &pc, 7);
	struct ibv_sge rs = { .addr = (uintptr_t)d.buf, .length = 16, .lkey = d.mr->lkey };
	struct ibv_recv_wr rw = { .wr_id = 9, .sg_list = &rs, .num_sge = 1 }, *rbad;
	CHECK(ibv_post_recv(d.qp, &rw, &rbad) == 0, "post_recv");
	struct ibv_sge big = { .addr = (uintptr_t)c.buf, .length = 1000, .lkey = c.mr->lkey };
	wr.sg_list = &big;
	CHECK(ibv_post_send(c.qp, &wr, &bad) == 0, "post_send");
	wc = wait_wc(&d);
	CHECK(wc.wr_id == 9 && wc.status == IBV_WC_LOC_LEN_ERR, "receiver of a too long message: %s", ibv_wc_status_str(wc.status));
	wc = wait_wc(&c);
	CHECK(wc.status == IBV_WC_REM_INV_REQ_ERR, "sender of a too long message: %s", ibv_wc_status_str(wc.status));

	/* Orderly teardown works once the objects are free. */
	CHECK(ibv_destroy_qp(a.qp) == 0 && ibv_dereg_mr(a.mr) == 0 && ibv_destroy_cq(a.cq) == 0 && ibv_dealloc_pd(a.pd) == 0, "teardown");
	CHECK(ibv_close_device(a.ctx) == 0, "close");
}

int main(void) {
	one_sided();
	errors();
	printf("verbs_check: ok\n");
	return 0;
}
