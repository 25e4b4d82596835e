/*
 * pause: the sandbox ("pause") process of the CRI tests' pods, built here
 * because no registry is reachable. Like Kubernetes' own pause it is PID 1
 * of a pod whose containers share its PID namespace, so it must reap the
 * zombies their orphans leave: a zombie keeps its PID, and a container
 * restored into that pod needs its old PIDs free. `sleep` as PID 1 would not
 * reap them. SIGTERM/SIGINT end it (PID 1 ignores signals without handlers).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
  (void)sig;
  _exit(0);
}

static void on_child(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = on_term};
  struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGINT, &term, NULL) < 0 || sigaction(SIGTERM, &term, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  if (getpid() != 1) fprintf(stderr, "pause: not PID 1 (%d): orphans are not reaped here\n", (int)getpid());
  for (;;) pause();
}
