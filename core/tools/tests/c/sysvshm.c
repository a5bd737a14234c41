/* System V shared memory: a ring buffer in a private segment (removed
 * with IPC_RMID once attached, as programs do) between a forked producer
 * and its parent, guarded by a System V semaphore set; a keyed segment
 * holds a counter that a child forked late attaches by id. The ids the
 * program holds must keep working (shmctl, shmat) after restarts.
 * Usage: sysvshm ITEMS */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>

#define SLOTS 32
struct ring { long head, tail, slot[SLOTS]; };

static void sem_add(int set, int num, int d) {
    struct sembuf op = {(unsigned short)num, (short)d, 0};
    while (semop(set, &op, 1) != 0)
        if (errno != EINTR) { perror("semop"); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long n = atol(argv[1]);
    FILE *k = fopen("shm.key", "w");
    fclose(k);
    key_t key = ftok("shm.key", 'S');
    int rid = shmget(IPC_PRIVATE, sizeof(struct ring), IPC_CREAT | 0600);
    int cid = shmget(key, 4096, IPC_CREAT | 0600);
    int set = semget(IPC_PRIVATE, 2, IPC_CREAT | 0600);
    if (rid < 0 || cid < 0 || set < 0) { perror("ipc"); return 1; }
    unsigned short init[2] = {SLOTS, 0};
    semctl(set, 0, SETALL, init);
    struct ring *r = shmat(rid, NULL, 0);
    long *counter = shmat(cid, NULL, 0);
    memset(r, 0, sizeof *r);
    *counter = 0;
    pid_t prod = fork();
    if (prod == 0) {
        for (long i = 1; i <= n; i++) {
            sem_add(set, 0, -1);
            r->slot[r->head++ % SLOTS] = i * 31 % 65537;
            sem_add(set, 1, 1);
            if (i % 8 == 0) usleep(1000);
        }
        _exit(0);
    }
    shmctl(rid, IPC_RMID, NULL); /* both attached: it lives while attached */
    long sum = 0;
    for (long i = 1; i <= n; i++) {
        sem_add(set, 1, -1);
        long v = r->slot[r->tail++ % SLOTS];
        sem_add(set, 0, 1);
        if (v != i * 31 % 65537) { printf("item %ld is %ld\n", i, v); return 1; }
        sum += v;
        *counter += 1;
        if (i % 500 == 0) { printf("got %ld\n", i); fflush(stdout); }
    }
    int st;
    waitpid(prod, &st, 0);
    pid_t late = fork();
    if (late == 0) {
        long *c = shmat(cid, NULL, 0);
        if (c == (void *)-1) _exit(20);
        _exit(*c == n ? 0 : 21);
    }
    int st2;
    waitpid(late, &st2, 0);
    struct shmid_ds ds;
    int statok = shmctl(cid, IPC_STAT, &ds) == 0 && ds.shm_segsz == 4096;
    printf("items %ld sum %ld counter %ld producer %d late child %d stat %d\n", n, sum, *counter, WEXITSTATUS(st), WEXITSTATUS(st2), statok);
    shmdt(r);
    shmdt(counter);
    shmctl(cid, IPC_RMID, NULL);
    semctl(set, 0, IPC_RMID);
    return 0;
}
