/* mpi_ring ITERS: every iteration each rank adds a value that depends on
 * its rank and the iteration, all ranks allreduce it, and rank 0 prints
 * the running checksum. Ends with the world size and the checksum. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int iters = argc > 1 ? atoi(argv[1]) : 100;
  unsigned long long sum = 0;
  struct timespec t = {0, 10000000};
  for (int i = 1; i <= iters; i++) {
    unsigned long long mine = (unsigned long long)(rank + 1) * 2654435761ULL * (unsigned long long)i, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    /* A message around the ring as well (point-to-point traffic). */
    int next = (rank + 1) % size, prev = (rank + size - 1) % size;
    unsigned long long got = 0;
    MPI_Sendrecv(&all, 1, MPI_UNSIGNED_LONG_LONG, next, 0, &got, 1, MPI_UNSIGNED_LONG_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    sum = sum * 31 + got;
    if (rank == 0) {
      printf("iter %d %llu\n", i, sum);
      fflush(stdout);
    }
    nanosleep(&t, NULL);
  }
  if (rank == 0) printf("size %d checksum %llu\n", size, sum);
  MPI_Finalize();
  return 0;
}
