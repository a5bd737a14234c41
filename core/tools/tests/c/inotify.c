/* inotify watches across restarts: a directory watch (IN_CREATE) and a
 * file watch (IN_MODIFY) at wds 1 and 3 (wd 2 was removed). Each step
 * makes an event on both and waits for it, checking wd and name. An event
 * not read yet when a restart happens is lost (the kernel cannot hand
 * them over), so after a second without it the step makes the event
 * again, as a program would after a lost notification.
 * Usage: inotify STEPS */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

static int ifd;

static void touch(const char *p) { int f = open(p, O_CREAT | O_WRONLY, 0644); close(f); }
static void append(const char *p) { int f = open(p, O_WRONLY | O_APPEND); if (write(f, "x", 1) != 1) exit(3); close(f); }

/* Wait for `mask` on `wd` (with `name` if given); `again` makes the event again. */
static void wait_for(int wd, unsigned mask, const char *name, void (*again)(const char *), const char *arg) {
    char buf[4096] __attribute__((aligned(8)));
    for (;;) {
        struct pollfd p = {ifd, POLLIN, 0};
        if (poll(&p, 1, 1000) == 0) { again(arg); continue; }
        ssize_t n = read(ifd, buf, sizeof buf);
        if (n <= 0) { perror("read"); exit(2); }
        for (char *q = buf; q < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)q;
            if (e->wd == wd && (e->mask & mask) && (!name || (e->len && !strcmp(e->name, name)))) return;
            q += sizeof *e + e->len;
        }
    }
}

static void recreate(const char *p) { unlink(p); touch(p); }

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    mkdir("watched", 0755);
    touch("f.txt");
    ifd = inotify_init1(0);
    int w1 = inotify_add_watch(ifd, "watched", IN_CREATE);
    int w2 = inotify_add_watch(ifd, "f.txt", IN_ATTRIB);
    inotify_rm_watch(ifd, w2);
    int w3 = inotify_add_watch(ifd, "f.txt", IN_MODIFY);
    printf("wds %d %d\n", w1, w3);
    fflush(stdout);
    for (int i = 0; i < steps; i++) {
        char name[32], path[64];
        snprintf(name, sizeof name, "f%d", i);
        snprintf(path, sizeof path, "watched/%s", name);
        touch(path);
        wait_for(w1, IN_CREATE, name, recreate, path);
        append("f.txt");
        wait_for(w3, IN_MODIFY, NULL, append, "f.txt");
        printf("step %d\n", i);
        fflush(stdout);
        usleep(20000);
    }
    printf("done\n");
    return 0;
}
