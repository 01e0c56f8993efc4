/* The pod sandbox's process: holds the pod's namespaces, reaps orphans, exits on SIGINT or
 * SIGTERM. Built static (musl) by `cargo xtask cluster up` into a FROM-scratch image. */
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static void down(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction on_down = {.sa_handler = down};
  struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (getpid() != 1) fprintf(stderr, "pause: not pid 1: orphans are not reaped here\n");
  if (sigaction(SIGINT, &on_down, NULL) || sigaction(SIGTERM, &on_down, NULL) ||
      sigaction(SIGCHLD, &on_child, NULL)) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) pause();
}
