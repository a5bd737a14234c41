/* A TCP connection whose other end was closed with bytes still queued in
 * the kernel (an orphaned socket: no process holds it, the kernel keeps
 * sending what it had): a child accepts, writes until the reader's window
 * is full, closes and exits; the parent reads nothing for six seconds
 * (checkpoints happen then), then reads to the end and checks every byte
 * and the count.
 * With argument "half": the child only shuts its sending side down and
 * stays (a half-closed connection in the job, bytes still in its send
 * queue); after reading everything the parent sends "bye" the other way,
 * which the child must get. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char pat(long i) { return (unsigned char)(i * 31 + i / 4096); }

int main(int argc, char **argv) {
	int half = argc > 1 && strcmp(argv[1], "half") == 0;
	int l = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof a;
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &al)) {
		perror("listen");
		return 1;
	}
	int pp[2];
	if (pipe(pp)) return 1;
	pid_t c = fork();
	if (c == 0) {
		int s = accept(l, NULL, NULL);
		fcntl(s, F_SETFL, O_NONBLOCK);
		static unsigned char buf[65536];
		long n = 0;
		for (;;) {
			for (int i = 0; i < (int)sizeof buf; i++) buf[i] = pat(n + i);
			ssize_t w = write(s, buf, sizeof buf);
			if (w < 0 && errno == EAGAIN) {
				struct pollfd p = { s, POLLOUT, 0 };
				if (poll(&p, 1, 300) == 0) break;
				continue;
			}
			if (w < 0) _exit(2);
			n += w;
		}
		if (half) shutdown(s, SHUT_WR);
		if (write(pp[1], &n, sizeof n) != sizeof n) _exit(3);
		if (!half) {
			close(s);
			_exit(0);
		}
		fcntl(s, F_SETFL, 0);
		char bye[8] = { 0 };
		ssize_t r = read(s, bye, 3);
		printf("server got %s\n", r == 3 && memcmp(bye, "bye", 3) == 0 ? "bye" : "something else");
		fflush(stdout);
		_exit(0);
	}
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(s, (struct sockaddr *)&a, sizeof a)) {
		perror("connect");
		return 1;
	}
	long n = 0;
	if (read(pp[0], &n, sizeof n) != sizeof n || n <= 0) return 1;
	int st;
	if (!half) waitpid(c, &st, 0);
	printf(half ? "server wrote and shut its side\n" : "server wrote and closed\n");
	fflush(stdout);
	for (int k = 1; k <= 6; k++) {
		sleep(1);
		printf("tick %d\n", k);
		fflush(stdout);
	}
	static unsigned char buf[65536];
	long got = 0;
	ssize_t r;
	while ((r = read(s, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != pat(got + i)) {
				printf("byte %ld differs BAD\n", got + i);
				return 1;
			}
		got += r;
	}
	if (r < 0) printf("read error after %ld of %ld bytes: %s BAD\n", got, n, strerror(errno));
	else if (got != n) printf("read %ld of %ld bytes BAD\n", got, n);
	else printf("read every byte ok\n");
	fflush(stdout);
	if (half) {
		if (write(s, "bye", 3) != 3) printf("cannot write bye BAD\n");
		fflush(stdout);
		waitpid(c, &st, 0);
	}
	return got == n ? 0 : 1;
}
