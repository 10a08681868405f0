/* The pod sandbox's process for the real-kubelet e2e (the kubelet's pause image cannot be
 * pulled here): it waits for a signal, reaps the children that reparent to it, and exits 0
 * on SIGINT or SIGTERM. Built static, so the image is this one file. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {
    }
}

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
