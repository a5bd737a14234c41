/* A Unix stream socket filled to the brim at checkpoint time: a child
 * writes 32 KiB blocks (non-blocking) until the kernel refuses more, says
 * "full N", and waits; the parent reads nothing until the file named by
 * argv[1] exists (the test makes it after its checkpoints), then reads to
 * the end and checks every byte and the count.
 * A write-back of the same bytes in other block sizes need not fit in the
 * sender's buffer again (the kernel counts buffers, not bytes: 229376
 * bytes written in 32 KiB blocks, only 219264 written back in one go);
 * with the reader idle, a resume that waits for the write-back to finish
 * would wait for ever. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned char pat(long i) { return (unsigned char)(i * 31 + i / 4096); }

static void wait_file(const char *path) {
	while (access(path, F_OK) != 0) poll(NULL, 0, 10);
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: fullsock GOFILE\n");
		return 2;
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) {
		perror("socketpair");
		return 1;
	}
	pid_t c = fork();
	if (c < 0) return 1;
	if (c == 0) {
		close(sv[1]);
		fcntl(sv[0], F_SETFL, O_NONBLOCK);
		static unsigned char buf[32768];
		long n = 0;
		for (;;) {
			for (int k = 0; k < (int)sizeof buf; k++) buf[k] = pat(n + k);
			ssize_t w = write(sv[0], buf, sizeof buf);
			if (w < 0 && errno == EAGAIN) break;
			if (w <= 0) {
				perror("write");
				return 1;
			}
			n += w;
		}
		printf("full %ld\n", n);
		fflush(stdout);
		wait_file(argv[1]);
		close(sv[0]);
		return 0;
	}
	close(sv[0]);
	wait_file(argv[1]);
	static unsigned char buf[65536];
	long n = 0;
	for (;;) {
		ssize_t r = read(sv[1], buf, sizeof buf);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) {
			perror("read");
			return 1;
		}
		if (r == 0) break;
		for (ssize_t k = 0; k < r; k++)
			if (buf[k] != pat(n + k)) {
				printf("byte %ld wrong\n", n + k);
				return 1;
			}
		n += r;
	}
	int st = 0;
	waitpid(c, &st, 0);
	printf("read %ld ok, writer exit %d\n", n, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
	return 0;
}
