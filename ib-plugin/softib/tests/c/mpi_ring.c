/*
 * MPI traffic with checked contents, for the software InfiniBand device
 * (ib-plugin/softib/tests/mpi.rs runs it over OpenMPI's openib BTL).
 *
 * - ping-pong between ranks 0 and 1 with sizes from 1 byte to 4 MiB (past
 *   openib's eager limit, so the rendezvous/RDMA pipeline protocols run),
 *   each message filled with a pattern that depends on size, round and
 *   sender, checked byte for byte on arrival and on return;
 * - 300 small messages alternating between ranks 0 and 1 (openib then
 *   switches to eager RDMA), checked;
 * - a ring: every rank sends a 256 KiB block to the next, receives from the
 *   previous, several rounds, checked;
 * - an allreduce of per-rank vectors, checked against the closed form;
 * - a checksum (FNV-1a over every byte received by every rank, combined
 *   with an allreduce) that only depends on the world size, printed by rank
 *   0 as "mpi_ring: ok size=N checksum=HEX".
 * Any mismatch prints what differed and aborts with exit code 3.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rank, size;
static double t_last;

/* With MPI_RING_TIMES set, rank 0 prints how long each phase took. */
static void phase(const char *name) {
    double now = MPI_Wtime();
    if (rank == 0 && getenv("MPI_RING_TIMES")) printf("mpi_ring: %s %.3f s\n", name, now - t_last);
    t_last = now;
}

static uint8_t pattern(size_t i, size_t len, int round, int from) {
    return (uint8_t)(i * 131u + len * 7u + (unsigned)round * 17u + (unsigned)from * 101u + (i >> 8));
}

static void fill(uint8_t *b, size_t len, int round, int from) {
    for (size_t i = 0; i < len; i++) b[i] = pattern(i, len, round, from);
}

static void check(const uint8_t *b, size_t len, int round, int from, const char *what) {
    for (size_t i = 0; i < len; i++) {
        if (b[i] != pattern(i, len, round, from)) {
            fprintf(stderr, "mpi_ring: rank %d: %s: len %zu round %d from %d: byte %zu is %u, expected %u\n",
                    rank, what, len, round, from, i, b[i], pattern(i, len, round, from));
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
    }
}

static uint64_t fnv(uint64_t h, const uint8_t *b, size_t len) {
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int expect = argc > 1 ? atoi(argv[1]) : 0;
    if (expect && size != expect) {
        fprintf(stderr, "mpi_ring: world size %d, expected %d\n", size, expect);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    char host[256];
    MPI_Get_processor_name(host, &(int){0});
    printf("mpi_ring: rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);

    t_last = MPI_Wtime();
    const size_t max = 4u << 20;
    uint8_t *buf = malloc(max), *ref = malloc(max);
    uint64_t h = 1469598103934665603ull;
    static const size_t sizes[] = {1, 7, 64, 1000, 4096, 12288, 65536, 65537, 200000, 1u << 20, 4u << 20};
    const int nsizes = sizeof sizes / sizeof sizes[0];

    /* Ping-pong 0 <-> 1: 1 sends, 0 checks and returns it altered.
     * MPI_RING_ROUNDS (default 3) rounds per size, for runs long enough to
     * be checkpointed in the middle. */
    const char *rounds_env = getenv("MPI_RING_ROUNDS");
    int rounds = rounds_env ? atoi(rounds_env) : 3;
    if (size >= 2 && rank < 2) {
        for (int s = 0; s < nsizes; s++) {
            size_t len = sizes[s];
            if (rank == 0 && getenv("MPI_RING_TIMES")) {
                printf("mpi_ring: size %zu\n", len);
                fflush(stdout);
            }
            for (int round = 0; round < rounds; round++) {
                if (rank == 1) {
                    fill(buf, len, round, 1);
                    MPI_Send(buf, (int)len, MPI_BYTE, 0, 10 + round % 5, MPI_COMM_WORLD);
                    memset(buf, 0, len);
                    MPI_Recv(buf, (int)len, MPI_BYTE, 0, 20 + round % 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                    check(buf, len, round, 0, "pong");
                    h = fnv(h, buf, len);
                } else {
                    MPI_Status st;
                    memset(buf, 0, len);
                    MPI_Recv(buf, (int)len, MPI_BYTE, 1, 10 + round % 5, MPI_COMM_WORLD, &st);
                    int got;
                    MPI_Get_count(&st, MPI_BYTE, &got);
                    if ((size_t)got != len) {
                        fprintf(stderr, "mpi_ring: got %d bytes, expected %zu\n", got, len);
                        MPI_Abort(MPI_COMM_WORLD, 3);
                    }
                    check(buf, len, round, 1, "ping");
                    h = fnv(h, buf, len);
                    fill(buf, len, round, 0);
                    MPI_Send(buf, (int)len, MPI_BYTE, 1, 20 + round % 5, MPI_COMM_WORLD);
                }
            }
        }
    }

    phase("ping-pong");

    /* Many small messages 0 <-> 1: past openib's eager RDMA threshold, so
       later ones are RDMA WRITEs into the receiver's eager buffers, which
       it polls in memory. */
    if (size >= 2 && rank < 2) {
        for (int round = 0; round < 300; round++) {
            size_t len = 1 + (size_t)(round * 37) % 2000;
            int from = round % 2, to = 1 - from;
            if (rank == from) {
                fill(buf, len, round, from);
                MPI_Send(buf, (int)len, MPI_BYTE, to, 40, MPI_COMM_WORLD);
            } else {
                memset(buf, 0, len);
                MPI_Recv(buf, (int)len, MPI_BYTE, from, 40, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                check(buf, len, round, from, "small");
                h = fnv(h, buf, len);
            }
        }
    }

    phase("small messages");

    /* Ring: nonblocking, several rounds of 256 KiB and 3000 bytes. */
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    static const size_t ring_sizes[] = {3000, 256 * 1024};
    for (int k = 0; k < 2; k++) {
        size_t len = ring_sizes[k];
        for (int round = 0; round < 5; round++) {
            MPI_Request rq[2];
            fill(ref, len, round, rank);
            memset(buf, 0, len);
            MPI_Irecv(buf, (int)len, MPI_BYTE, prev, 30, MPI_COMM_WORLD, &rq[0]);
            MPI_Isend(ref, (int)len, MPI_BYTE, next, 30, MPI_COMM_WORLD, &rq[1]);
            MPI_Waitall(2, rq, MPI_STATUSES_IGNORE);
            check(buf, len, round, prev, "ring");
            h = fnv(h, buf, len);
        }
    }

    phase("ring");

    /* Allreduce: element i of rank r is r*i + 1 (as longs); the sum is
       i*size*(size-1)/2 + size. 300000 longs: 2.4 MB, more than eager. */
    const int n = 300000;
    long *v = malloc(n * sizeof(long)), *sum = malloc(n * sizeof(long));
    for (int i = 0; i < n; i++) v[i] = (long)rank * i + 1;
    MPI_Allreduce(v, sum, n, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    for (int i = 0; i < n; i++) {
        long want = (long)i * size * (size - 1) / 2 + size;
        if (sum[i] != want) {
            fprintf(stderr, "mpi_ring: rank %d: allreduce[%d] = %ld, expected %ld\n", rank, i, sum[i], want);
            MPI_Abort(MPI_COMM_WORLD, 3);
        }
    }
    h = fnv(h, (const uint8_t *)sum, n * sizeof(long));

    phase("allreduce");

    /* Combine: rank order matters, so gather every rank's hash at 0. */
    uint64_t *all = malloc(size * sizeof(uint64_t));
    MPI_Gather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        uint64_t c = 1469598103934665603ull;
        for (int r = 0; r < size; r++) c = fnv(c, (const uint8_t *)&all[r], sizeof all[r]);
        printf("mpi_ring: ok size=%d checksum=%016llx\n", size, (unsigned long long)c);
        fflush(stdout);
    }
    free(all);
    free(v);
    free(sum);
    free(buf);
    free(ref);
    MPI_Finalize();
    return 0;
}
