/* Locks held across restarts: the parent holds a record lock (fcntl) on
 * part of one file and a flock on another the whole run; a child keeps
 * trying to take both (its own open of the flock file) and must find them
 * taken every time. After the parent lets go, the child gets them.
 * Usage: locks STEPS */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

static int try_both(void) {
    int a = open("rec.lock", O_RDWR), b = open("whole.lock", O_RDWR);
    struct flock fl = {F_WRLCK, SEEK_SET, 10, 20, 0};
    int rec = fcntl(a, F_SETLK, &fl) == 0;
    int fk = flock(b, LOCK_EX | LOCK_NB) == 0;
    close(a);
    close(b);
    return rec * 2 + fk;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int steps = atoi(argv[1]);
    int a = open("rec.lock", O_RDWR | O_CREAT | O_TRUNC, 0644), b = open("whole.lock", O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (ftruncate(a, 100)) return 1;
    struct flock fl = {F_WRLCK, SEEK_SET, 0, 50, 0};
    if (fcntl(a, F_SETLK, &fl) || flock(b, LOCK_EX)) { perror("lock"); return 1; }
    int p[2];
    if (pipe(p)) return 1;
    pid_t kid = fork();
    if (kid == 0) {
        close(p[1]);
        int got = 0;
        char c;
        /* Try until the parent says it let go (a slow child must not try
         * after the release and count that as a failure to hold). */
        fcntl(p[0], F_SETFL, O_NONBLOCK);
        int released = 0;
        for (int i = 0; i < steps && !released; i++) {
            if (read(p[0], &c, 1) == 1) {
                released = 1;
                break;
            }
            got |= try_both();
            usleep(20000);
        }
        fcntl(p[0], F_SETFL, 0);
        if (!released && read(p[0], &c, 1) != 1) _exit(9); /* the parent is letting go */
        if (read(p[0], &c, 1) != 1) _exit(9);               /* the parent has let go */
        _exit(got * 10 + try_both());
    }
    close(p[0]);
    for (int i = 0; i < steps; i++) {
        printf("step %d\n", i);
        fflush(stdout);
        usleep(20000);
    }
    /* Tell the child to stop trying, let go, then tell it to try once more. */
    if (write(p[1], "x", 1) != 1) return 1;
    fl.l_type = F_UNLCK;
    fcntl(a, F_SETLK, &fl);
    flock(b, LOCK_UN);
    if (write(p[1], "y", 1) != 1) return 1;
    int st;
    waitpid(kid, &st, 0);
    int code = WEXITSTATUS(st);
    printf("while held the child got %d, after release %d\n", code / 10, code % 10);
    return 0;
}
