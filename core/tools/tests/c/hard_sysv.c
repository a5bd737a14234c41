/* System V semaphores and a message queue used in tight loops by several
 * threads until told to stop:
 *  - two threads take and give back semaphore 0 (a lock around a counter);
 *  - SOLO threads each take and give back a semaphore of their own (never
 *    waiting: many calls);
 *  - a producer sends numbered messages, a consumer receives them and checks
 *    the order; at the end the producer sends its count.
 * The objects are keyed KEY and KEY+1, so a test can remove leftovers.
 * Usage: hard_sysv MAX_SECS KEY SOLO
 * Output: "started", then RESULT (deterministic). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include "hard_common.h"

struct msg { long type; long seq; };
static int semid, msqid;
static volatile int stop;
#define MAXS 16
static long counter, local[2], solo_ops[MAXS], sent, bad_order, received;

static void sem_add_n(int num, int d) {
  struct sembuf op = {(unsigned short)num, (short)d, 0};
  while (semop(semid, &op, 1) != 0)
    if (errno != EINTR) { perror("semop"); exit(1); }
}

static void sem_add(int d) { sem_add_n(0, d); }

static void *locker(void *a) {
  long i = (long)a;
  while (!stop) {
    sem_add(-1);
    counter++;
    local[i]++;
    sem_add(1);
  }
  return NULL;
}

static void *solo(void *a) {
  long i = (long)a;
  while (!stop) {
    sem_add_n(1 + (int)i, -1);
    solo_ops[i]++;
    sem_add_n(1 + (int)i, 1);
  }
  return NULL;
}

static void *producer(void *a) {
  (void)a;
  long seq = 0;
  while (!stop) {
    struct msg m = {1, ++seq};
    while (msgsnd(msqid, &m, sizeof m.seq, 0) != 0)
      if (errno != EINTR) { perror("msgsnd"); exit(1); }
  }
  sent = seq;
  struct msg end = {2, seq};
  while (msgsnd(msqid, &end, sizeof end.seq, 0) != 0)
    if (errno != EINTR) { perror("msgsnd"); exit(1); }
  return NULL;
}

static void *consumer(void *a) {
  (void)a;
  long expect = 1;
  for (;;) {
    struct msg m;
    ssize_t n = msgrcv(msqid, &m, sizeof m.seq, 0, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { perror("msgrcv"); exit(1); }
    if (m.type == 2) {
      if (m.seq != expect - 1) bad_order++;
      break;
    }
    if (m.seq != expect) bad_order++;
    expect = m.seq + 1;
    received++;
  }
  return NULL;
}

int main(int argc, char **argv) {
  double max = argc > 1 ? atof(argv[1]) : 2;
  key_t key = argc > 2 ? (key_t)strtol(argv[2], 0, 0) : 0x4a000000;
  int ns = argc > 3 ? atoi(argv[3]) : 2;
  if (ns < 0 || ns > MAXS) ns = 2;
  semid = semget(key, 1 + ns, IPC_CREAT | IPC_EXCL | 0600);
  msqid = msgget(key + 1, IPC_CREAT | IPC_EXCL | 0600);
  if (semid < 0 || msqid < 0) { perror("ipc"); return 1; }
  unsigned short ones[MAXS + 1];
  for (int i = 0; i <= ns; i++) ones[i] = 1;
  semctl(semid, 0, SETALL, ones);
  pthread_t t[MAXS + 4];
  int nt = 0;
  for (long i = 0; i < 2; i++) pthread_create(&t[nt++], NULL, locker, (void *)i);
  for (long i = 0; i < ns; i++) pthread_create(&t[nt++], NULL, solo, (void *)i);
  pthread_create(&t[nt++], NULL, producer, NULL);
  pthread_create(&t[nt++], NULL, consumer, NULL);
  printf("started\n");
  fflush(stdout);
  hard_wait_stop(max);
  stop = 1;
  for (int i = 0; i < nt; i++) pthread_join(t[i], NULL);
  int val = semctl(semid, 0, GETVAL);
  long sum = local[0] + local[1];
  int all_ran = local[0] > 0 && local[1] > 0;
  for (int i = 0; i < ns; i++) {
    all_ran &= solo_ops[i] > 0;
    if (semctl(semid, 1 + i, GETVAL) != 1) val = -1;
  }
  int sem_ok = counter == sum && val == 1 && all_ran;
  int msg_ok = bad_order == 0 && received == sent && sent > 0;
  if (!sem_ok) printf("sem: counter %ld sum of locals %ld value %d all ran %d\n", counter, sum, val, all_ran);
  if (!msg_ok) printf("msg: sent %ld received %ld out of order %ld\n", sent, received, bad_order);
  semctl(semid, 0, IPC_RMID);
  msgctl(msqid, IPC_RMID, NULL);
  printf("RESULT sem %s msg %s\n", sem_ok ? "ok" : "BAD", msg_ok ? "ok" : "BAD");
  return 0;
}
