/* System V IPC between three processes: a producer child sends numbered
 * messages of three types through a private message queue, throttled by a
 * semaphore of a keyed set (free slots); the parent receives them (any
 * type), checks each type's sequence and frees a slot; a second child
 * bumps another semaphore of the set. Messages sit in the queue at any
 * moment. Only the parent prints.
 * Usage: sysvipc MESSAGES */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/wait.h>
#include <unistd.h>

struct msg { long type; long seq; char text[40]; };

static void sem_add(int set, int num, int d) {
    struct sembuf op = {(unsigned short)num, (short)d, 0};
    while (semop(set, &op, 1) != 0)
        if (errno != EINTR) { perror("semop"); exit(1); }
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long n = atol(argv[1]);
    FILE *k = fopen("ipc.key", "w");
    fclose(k);
    key_t key = ftok("ipc.key", 'D');
    int q = msgget(IPC_PRIVATE, IPC_CREAT | 0600);
    int set = semget(key, 2, IPC_CREAT | IPC_EXCL | 0600);
    if (set < 0 && errno == EEXIST) {
        semctl(semget(key, 2, 0600), 0, IPC_RMID);
        set = semget(key, 2, IPC_CREAT | IPC_EXCL | 0600);
    }
    if (q < 0 || set < 0) { perror("ipc"); return 1; }
    unsigned short init[2] = {6, 0};
    semctl(set, 0, SETALL, init);
    pid_t producer = fork();
    if (producer == 0) {
        for (long i = 0; i < n; i++) {
            sem_add(set, 0, -1);
            struct msg m = {1 + i % 3, i / 3, ""};
            snprintf(m.text, sizeof m.text, "message %ld", i);
            while (msgsnd(q, &m, sizeof m - sizeof(long), 0) != 0)
                if (errno != EINTR) _exit(10);
            usleep(1000);
        }
        _exit(0);
    }
    pid_t bumper = fork();
    if (bumper == 0) {
        for (int i = 0; i < 200; i++) {
            sem_add(set, 1, 1);
            usleep(5000);
        }
        _exit(0);
    }
    long next[4] = {0, 0, 0, 0};
    for (long i = 0; i < n; i++) {
        struct msg m;
        ssize_t r;
        while ((r = msgrcv(q, &m, sizeof m - sizeof(long), 0, 0)) < 0)
            if (errno != EINTR) { perror("msgrcv"); return 1; }
        char want[40];
        snprintf(want, sizeof want, "message %ld", m.seq * 3 + m.type - 1);
        if (m.type < 1 || m.type > 3 || m.seq != next[m.type]++ || strcmp(m.text, want)) {
            printf("out of order: type %ld seq %ld '%s'\n", m.type, m.seq, m.text);
            return 1;
        }
        sem_add(set, 0, 1);
        if ((i + 1) % 100 == 0) { printf("got %ld\n", i + 1); fflush(stdout); }
    }
    int st1, st2;
    waitpid(producer, &st1, 0);
    waitpid(bumper, &st2, 0);
    printf("messages %ld bumps %d slots %d children %d %d\n", n, semctl(set, 1, GETVAL), semctl(set, 0, GETVAL),
           WEXITSTATUS(st1), WEXITSTATUS(st2));
    msgctl(q, IPC_RMID, NULL);
    semctl(set, 0, IPC_RMID);
    return 0;
}
