/*
 * arch-console-relay: holds a restored terminal until ARCH knows the restore
 * worked (core/console-relay.ts runs it).
 *
 * A create with a terminal names a console socket: runc connects to it and
 * sends the terminal's master fd (SCM_RIGHTS), and the caller (containerd's
 * shim) accepts exactly one connection. A restore spends it as soon as runc
 * starts, even when CRIU then fails, so the fresh start that must follow a
 * failed restore would have no terminal and the container would not start
 * at all. So runc restores against this relay's socket instead; the relay
 * passes the master on to the caller's socket only when told to ("send"),
 * and a failed restore leaves the caller's socket untouched for the fresh
 * create. Node cannot do this itself: it cannot receive or send fds over a
 * UNIX socket.
 *
 *   arch-console-relay LISTEN_PATH
 *
 * Prints "ready" once LISTEN_PATH listens. Reads commands on stdin:
 *   send CALLER_SOCKET  forward the master received from runc (waiting for it
 *                       up to 10 s), print "sent" and exit 0
 *   drop, or EOF        close it and exit 0 (Node gone: nothing is forwarded)
 * Errors go to stderr with exit status 1. LISTEN_PATH is removed on exit.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NAME_MAX_LEN 4096
#define WAIT_FOR_MASTER_MS 10000

static const char *listen_path;
static char name[NAME_MAX_LEN];
static ssize_t name_len;
static int master = -1;

static void fail(const char *what)
{
	fprintf(stderr, "arch-console-relay: %s: %s\n", what, strerror(errno));
	unlink(listen_path);
	exit(1);
}

static int unix_address(struct sockaddr_un *sa, const char *path)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	strcpy(sa->sun_path, path);
	return 0;
}

/* One message from runc: the master's name as data, the fd as SCM_RIGHTS. 0 on EOF without one. */
static int receive_master(int conn)
{
	char control[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = name, .iov_len = sizeof(name) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN ? -2 : -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			memcpy(&master, CMSG_DATA(c), sizeof(int));
			name_len = n;
			return 1;
		}
	}
	return 0;
}

static void send_master(const char *to)
{
	struct sockaddr_un sa;
	if (unix_address(&sa, to) < 0)
		fail("caller's console socket");
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fail("connect to the caller's console socket");
	char control[CMSG_SPACE(sizeof(int))];
	memset(control, 0, sizeof(control));
	struct iovec iov = { .iov_base = name, .iov_len = (size_t)name_len };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &master, sizeof(int));
	if (sendmsg(s, &msg, 0) < 0)
		fail("send the terminal to the caller's console socket");
	close(s);
}

static long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: arch-console-relay LISTEN_PATH\n");
		return 2;
	}
	listen_path = argv[1];
	struct sockaddr_un sa;
	if (unix_address(&sa, listen_path) < 0)
		fail("listen path");
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (l < 0)
		fail("socket");
	unlink(listen_path);
	umask(077); /* only root (runc) may connect */
	if (bind(l, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(l, 4) < 0)
		fail("listen");
	printf("ready\n");
	fflush(stdout);

	int conn = -1;
	char line[8192];
	size_t used = 0;
	char *send_to = NULL; /* set once "send" arrived before the master did */
	long deadline = 0;
	for (;;) {
		if (send_to && master >= 0) {
			send_master(send_to);
			printf("sent\n");
			fflush(stdout);
			unlink(listen_path);
			return 0;
		}
		struct pollfd p[3] = {
			{ .fd = send_to ? -1 : 0, .events = POLLIN },
			{ .fd = master < 0 && conn < 0 ? l : -1, .events = POLLIN },
			{ .fd = master < 0 ? conn : -1, .events = POLLIN },
		};
		int timeout = -1;
		if (send_to) {
			long left = deadline - now_ms();
			if (left <= 0) {
				fprintf(stderr, "arch-console-relay: runc sent no terminal within %d ms\n", WAIT_FOR_MASTER_MS);
				unlink(listen_path);
				return 1;
			}
			timeout = (int)left;
		}
		if (poll(p, 3, timeout) < 0) {
			if (errno == EINTR)
				continue;
			fail("poll");
		}
		if (p[1].revents & POLLIN) {
			conn = accept4(l, NULL, NULL, SOCK_CLOEXEC);
			if (conn < 0 && errno != EINTR && errno != EAGAIN)
				fail("accept");
		}
		if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
			int r = receive_master(conn);
			if (r == -1)
				fail("receive the terminal from runc");
			if (r >= 0) {
				/* Received, or runc hung up without one (its restore failed): ready for another. */
				close(conn);
				conn = -1;
			}
		}
		if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
			ssize_t n = read(0, line + used, sizeof(line) - 1 - used);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				break; /* EOF: Node is done with us, or gone */
			used += (size_t)n;
			line[used] = '\0';
			char *nl = strchr(line, '\n');
			if (!nl) {
				if (used == sizeof(line) - 1) {
					fprintf(stderr, "arch-console-relay: command too long\n");
					break;
				}
				continue;
			}
			*nl = '\0';
			if (strncmp(line, "send ", 5) == 0) {
				send_to = line + 5;
				deadline = now_ms() + WAIT_FOR_MASTER_MS;
			} else {
				break; /* "drop", or anything else */
			}
		}
	}
	unlink(listen_path);
	return 0;
}
