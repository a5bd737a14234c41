/* Producer/consumer threads with a mutex and condvars; other threads sit in
 * nanosleep and in read() on a pipe when checkpoints happen. Deterministic
 * output: progress lines, then RESULT. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define QN 8
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER, not_full = PTHREAD_COND_INITIALIZER;
static long q[QN]; static int qh, qt, qn, done;
static long consumed[2];
static int pfd[2];
static __thread long tls_counter;

static void msleep(int ms) { struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L}; while (nanosleep(&ts, &ts) != 0) {} }

static void *producer(void *a) {
  long id = (long)a;
  for (long i = 0; i < 150; i++) {
    pthread_mutex_lock(&m);
    while (qn == QN) pthread_cond_wait(&not_full, &m);
    q[qt] = i * 7 + id; qt = (qt + 1) % QN; qn++;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&m);
    tls_counter += i;
    msleep(10);
  }
  return (void *)tls_counter;
}

static void *consumer(void *a) {
  long id = (long)a;
  for (;;) {
    pthread_mutex_lock(&m);
    while (qn == 0 && !done) pthread_cond_wait(&not_empty, &m);
    if (qn == 0 && done) { pthread_mutex_unlock(&m); break; }
    long v = q[qh]; qh = (qh + 1) % QN; qn--;
    pthread_cond_signal(&not_full);
    pthread_mutex_unlock(&m);
    consumed[id] += v * v;
  }
  return NULL;
}

static void *reader(void *a) {
  (void)a;
  long sum = 0; char buf[64]; ssize_t n;
  while ((n = read(pfd[0], buf, sizeof buf)) > 0)
    for (ssize_t i = 0; i < n; i++) sum += buf[i];
  return (void *)sum;
}

static void *sleeper(void *a) {
  (void)a;
  long ticks = 0;
  for (int i = 0; i < 30; i++) { msleep(100); ticks++; }
  return (void *)ticks;
}

int main(void) {
  if (pipe(pfd) != 0) return 2;
  pthread_t p[2], c[2], r, s;
  for (long i = 0; i < 2; i++) pthread_create(&p[i], 0, producer, (void *)i);
  for (long i = 0; i < 2; i++) pthread_create(&c[i], 0, consumer, (void *)i);
  pthread_create(&r, 0, reader, 0);
  pthread_create(&s, 0, sleeper, 0);
  for (int step = 0; step < 25; step++) {
    msleep(100);
    char msg[32]; int n = snprintf(msg, sizeof msg, "tick%d;", step);
    if (write(pfd[1], msg, n) != n) return 3;
    printf("step %d\n", step); fflush(stdout);
  }
  long tls_total = 0;
  for (int i = 0; i < 2; i++) { void *v; pthread_join(p[i], &v); tls_total += (long)v; }
  pthread_mutex_lock(&m); done = 1; pthread_cond_broadcast(&not_empty); pthread_mutex_unlock(&m);
  for (int i = 0; i < 2; i++) pthread_join(c[i], 0);
  close(pfd[1]);
  void *rs, *ss; pthread_join(r, &rs); pthread_join(s, &ss);
  printf("RESULT consumed=%ld tls=%ld pipe=%ld ticks=%ld\n", consumed[0] + consumed[1], tls_total, (long)rs, (long)ss);
  return 0;
}
