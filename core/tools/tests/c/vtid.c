/* Thread and process ids a program learnt before a restart, used after it:
 * two named worker threads note their tid (gettid and syscall(SYS_gettid))
 * and keep checking it; the main thread checks getpid (both ways), sends
 * SIGUSR1 to each worker with tgkill and syscall(SYS_tgkill) and checks
 * which thread got it, opens /proc/<pid>/task/<tid>/comm (open) and
 * /proc/<pid>/status (fopen), and stats, lists and tests the paths. Each
 * step prints "step N ok" or "step N BAD <what>"; the output is the same
 * for every correct run. Without a pid namespace a restart gives every
 * thread new ids: the program must not notice. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NW 2
static pid_t tids[NW];
static volatile int done;
static volatile long bad_worker[NW];
static volatile pid_t got;

static void on_usr1(int sig) {
	(void)sig;
	got = gettid();
}

static void *worker(void *arg) {
	long i = (long)arg;
	char name[16];
	snprintf(name, sizeof name, "worker%ld", i);
	pthread_setname_np(pthread_self(), name);
	tids[i] = gettid();
	while (!done) {
		if (gettid() != tids[i] || syscall(SYS_gettid) != tids[i]) bad_worker[i]++;
		usleep(2000);
	}
	return NULL;
}

static int read_file(const char *path, char *buf, size_t n) {
	int fd = open(path, O_RDONLY);
	if (fd < 0) return -1;
	ssize_t r = read(fd, buf, n - 1);
	close(fd);
	if (r < 0) return -1;
	buf[r] = 0;
	return 0;
}

int main(int argc, char **argv) {
	setvbuf(stdout, NULL, _IOLBF, 0);
	int steps = argc > 1 ? atoi(argv[1]) : 100;
	signal(SIGUSR1, on_usr1);
	pid_t pid = getpid();
	pthread_t th[NW];
	for (long i = 0; i < NW; i++) pthread_create(&th[i], NULL, worker, (void *)i);
	for (int i = 0; i < NW; i++)
		while (!tids[i]) usleep(1000);
	for (int s = 0; s < steps; s++) {
		char what[256] = "";
		char path[128], buf[4096];
		if (getpid() != pid || syscall(SYS_getpid) != pid) strcat(what, " getpid");
		for (int i = 0; i < NW; i++) {
			got = 0;
			int r = (s + i) % 2 ? tgkill(pid, tids[i], SIGUSR1) : (int)syscall(SYS_tgkill, pid, tids[i], SIGUSR1);
			for (int k = 0; r == 0 && got == 0 && k < 2000; k++) usleep(1000);
			if (r != 0 || got != tids[i]) strcat(what, " tgkill");
			snprintf(path, sizeof path, "/proc/%d/task/%d/comm", pid, tids[i]);
			char want[32];
			snprintf(want, sizeof want, "worker%d\n", i);
			if (read_file(path, buf, sizeof buf) || strcmp(buf, want)) strcat(what, " comm");
			struct stat st;
			if (stat(path, &st) || access(path, R_OK)) strcat(what, " stat");
			cpu_set_t set;
			if (sched_getaffinity(tids[i], sizeof set, &set) || sched_setaffinity(tids[i], sizeof set, &set))
				strcat(what, " affinity");
		}
		snprintf(path, sizeof path, "/proc/%d/status", pid);
		FILE *f = fopen(path, "r");
		if (!f || !fgets(buf, sizeof buf, f) || strcmp(buf, "Name:\tvtid\n")) strcat(what, " status");
		if (f) fclose(f);
		snprintf(path, sizeof path, "/proc/%d/task", pid);
		DIR *d = opendir(path);
		int n = 0;
		if (d) {
			while (readdir(d)) n++;
			closedir(d);
		}
		if (n < NW + 3) strcat(what, " task-dir"); /* the checkpointer adds threads */
		snprintf(path, sizeof path, "/proc/%d/exe", pid);
		ssize_t l = readlink(path, buf, sizeof buf - 1);
		if (l <= 0) strcat(what, " exe");
		if (kill(pid, 0)) strcat(what, " kill");
		printf("step %d %s%s\n", s, what[0] ? "BAD" : "ok", what);
		usleep(40000);
	}
	done = 1;
	long bw = 0;
	for (int i = 0; i < NW; i++) {
		pthread_join(th[i], NULL);
		bw += bad_worker[i];
	}
	printf("RESULT workers %s\n", bw ? "BAD" : "ok");
	return 0;
}
