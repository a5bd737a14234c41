/* bench ibrate: what one verb call costs, bare or under the IB plugin.
 * Times ibv_poll_cq on an empty CQ (the call a busy-polling program makes
 * most) and prints the best of 7 rounds of 2,000,000 calls in ns per call,
 * so the plugin's fixed per-call cost shows apart from the device's
 * message path and from the load on the machine (a best-of figure). */
#include <infiniband/verbs.h>
#include <stdio.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(void)
{
    int n = 0;
    struct ibv_device **l = ibv_get_device_list(&n);
    if (!l || n == 0) {
        fprintf(stderr, "ib_callcost: no verbs device\n");
        return 1;
    }
    struct ibv_context *c = ibv_open_device(l[0]);
    struct ibv_cq *cq = c ? ibv_create_cq(c, 16, NULL, NULL, 0) : NULL;
    if (!cq) {
        fprintf(stderr, "ib_callcost: cannot open %s or create a CQ\n",
                ibv_get_device_name(l[0]));
        return 1;
    }
    const int calls = 2000000;
    double best = 1e9;
    struct ibv_wc wc;
    for (int round = 0; round < 7; round++) {
        double t0 = now();
        for (int i = 0; i < calls; i++)
            if (ibv_poll_cq(cq, 1, &wc) != 0) {
                fprintf(stderr, "ib_callcost: a completion on an idle CQ\n");
                return 1;
            }
        double ns = (now() - t0) / calls * 1e9;
        if (ns < best)
            best = ns;
    }
    printf("poll_ns %.1f\n", best);
    ibv_destroy_cq(cq);
    ibv_close_device(c);
    ibv_free_device_list(l);
    return 0;
}
