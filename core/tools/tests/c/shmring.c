/* A ring buffer in MAP_SHARED|MAP_ANONYMOUS memory between a forked
 * producer and its parent, guarded by process-shared POSIX semaphores in
 * the same memory; a second shared counter lives in a POSIX shm object
 * (shm_open). The consumer checks every item. Only the parent prints.
 * Usage: shmring ITEMS */
#include <fcntl.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define SLOTS 64

struct ring {
    sem_t items, spaces;
    long head, tail;
    long slot[SLOTS];
};

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long n = atol(argv[1]);
    struct ring *r = mmap(NULL, sizeof *r, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) return 1;
    sem_init(&r->items, 1, 0);
    sem_init(&r->spaces, 1, SLOTS);
    char name[64];
    snprintf(name, sizeof name, "/shmring-%d", getpid());
    int sfd = shm_open(name, O_CREAT | O_RDWR | O_EXCL, 0600);
    if (sfd < 0 || ftruncate(sfd, 4096)) { perror("shm_open"); return 1; }
    volatile long *posix = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    close(sfd);
    pid_t kid = fork();
    if (kid == 0) {
        for (long i = 1; i <= n; i++) {
            while (sem_wait(&r->spaces)) ;
            r->slot[r->head++ % SLOTS] = i * 7919 % 1000003;
            __atomic_add_fetch(posix, i, __ATOMIC_SEQ_CST);
            sem_post(&r->items);
            if (i % 16 == 0) usleep(1000);
        }
        _exit(0);
    }
    long sum = 0;
    for (long i = 1; i <= n; i++) {
        while (sem_wait(&r->items)) ;
        long v = r->slot[r->tail++ % SLOTS];
        sem_post(&r->spaces);
        if (v != i * 7919 % 1000003) { printf("item %ld is %ld\n", i, v); return 1; }
        sum += v;
        if (i % 5000 == 0) { printf("got %ld\n", i); fflush(stdout); }
    }
    int st;
    waitpid(kid, &st, 0);
    printf("items %ld sum %ld posix-shm %ld child exit %d\n", n, sum, *posix, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    shm_unlink(name);
    return 0;
}
