/* A periodic interval timer whose signal is pending (blocked) at
 * checkpoint time: the kernel re-arms such a timer only when the signal is
 * taken, so until then it reads as disarmed (it_value 0). After restarts
 * the timer must still be periodic once the signal is unblocked. */
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static void on_alrm(int s) { (void)s; alarms++; }

int main(void) {
    signal(SIGALRM, on_alrm);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGALRM);
    sigprocmask(SIG_BLOCK, &s, NULL);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    sigset_t p;
    do {
        usleep(1000);
        sigpending(&p);
    } while (!sigismember(&p, SIGALRM));
    struct itimerval now;
    getitimer(ITIMER_REAL, &now);
    printf("alarm pending, timer reads %s\n", now.it_value.tv_sec || now.it_value.tv_usec ? "armed" : "0");
    fflush(stdout);
    for (int k = 1; k <= 6; k++) {
        sleep(1);
        printf("tick %d\n", k);
        fflush(stdout);
    }
    sigprocmask(SIG_UNBLOCK, &s, NULL);
    for (int i = 0; i < 100 && alarms < 20; i++) usleep(20000);
    printf("alarms after unblocking: %s\n", alarms >= 20 ? "20 or more" : "too few");
    return alarms >= 20 ? 0 : 1;
}
