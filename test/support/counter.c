/*
 * counter: the workload of ARCH's integration tests and benchmarks.
 *
 * A static program (gcc -static) so the test image needs no libc. It keeps
 * its state in memory, so a restored process can be told apart from a fresh
 * start: after a good restore the count goes on from where it was; after a
 * fallback to a fresh start it begins at 1 again and appends a line to
 * <state dir>/starts.
 *
 * Environment:
 *   COUNTER_INTERVAL_MS  tick period (default 100)
 *   COUNTER_WORK         before each tick, compute this many rounds of a
 *                        pseudo-random generator (default 0): with
 *                        COUNTER_INTERVAL_MS=0 the job is CPU-bound, its
 *                        tick's file write and output line a small share
 *   COUNTER_FILE         where each value is written, atomically with
 *                        write + rename (default /state/count)
 *   COUNTER_MEM_MB       allocate and touch this many MiB at start and keep it
 *                        resident: first half pseudo-random bytes (so a
 *                        checkpoint does not compress), second half a pattern
 *   COUNTER_VERIFY_EVERY every N ticks re-check that memory still holds what
 *                        was written; prints "memcheck ok|FAIL" and writes
 *                        <state dir>/memcheck (0 = never, the default)
 *   COUNTER_START_FILES  if set, at start: create <state dir>/created.txt,
 *                        <state dir>/created-dir/nested.txt and a hard link
 *                        <state dir>/created-dir/created-link.txt to
 *                        created.txt, overwrite
 *                        /etc/to-modify.txt, delete /etc/to-delete.txt (both
 *                        are in the test image). Lets a test check that the
 *                        writable layer (new, changed and deleted files)
 *                        survives a checkpoint/restore.
 *   COUNTER_EXIT_AFTER   exit once the count reaches N (0 = never)
 *   COUNTER_EXIT_CODE    ... with this exit code (default 0; a crash-like exit)
 *   COUNTER_LOG          also append each value, one per line, to this file
 *                        (opened and closed each tick): on a shared work dir it
 *                        shows whether two copies of the job ever ran at once
 *   COUNTER_OUT          also write each value, one per line, to this file,
 *                        opened once at start (O_TRUNC) and kept open, as a
 *                        job writes its results: CRIU records the open file's
 *                        size at a checkpoint
 *   COUNTER_OUT_APPEND   if set, COUNTER_OUT is opened O_APPEND instead (a log)
 *   COUNTER_TCP          if set, hold a TCP connection open (to a listener of
 *                        its own on 127.0.0.1), send a byte over it each tick,
 *                        and connect again when it breaks: prints "tcp up"
 *                        at each connect and "tcp broken" when a send fails,
 *                        as a job with a database or HTTP connection does
 *   COUNTER_LOCK         at start, open this file and hold an exclusive
 *                        flock(2) on it, and a POSIX record lock (fcntl
 *                        F_SETLK) on its first byte, as a job does that
 *                        keeps a lock file or an HDF5/SQLite file open;
 *                        with COUNTER_VERIFY_EVERY, checks in /proc/locks
 *                        that it holds both: prints "lockcheck ok|FAIL"
 *   COUNTER_GHOST        at start, write COUNTER_GHOST_MB MiB (default 4) of
 *                        lines "arch ghost line NNNNNNNN\n" to this file,
 *                        delete it and keep it open, as a job does with a
 *                        temporary or spill file; with COUNTER_VERIFY_EVERY,
 *                        re-read it then: prints "ghostcheck ok|FAIL" and
 *                        writes <state dir>/ghostcheck
 *
 * Output: "counter start pid=P\n" once, then "count N\n" each tick, flushed.
 * SIGTERM/SIGINT: prints "counter exit N" and exits 0 (a clean exit), which
 * a pid-1 process would otherwise ignore.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

static volatile sig_atomic_t stop_requested = 0;
static void on_term(int sig) { (void)sig; stop_requested = 1; }

static long env_long(const char *name, long dflt) {
  const char *v = getenv(name);
  if (!v || !*v) return dflt;
  char *end = NULL;
  long n = strtol(v, &end, 10);
  return (end && *end == '\0' && n >= 0) ? n : dflt;
}

/* mkdir -p */
static void mkdirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p == '/') { *p = '\0'; mkdir(buf, 0755); *p = '/'; }
  }
  mkdir(buf, 0755);
}

/* Write a whole file atomically: tmp file, then rename over the target. */
static int write_atomic(const char *path, const char *data, size_t len) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return -1;
  ssize_t w = write(fd, data, len);
  close(fd);
  if (w != (ssize_t)len) return -1;
  return rename(tmp, path);
}

/* xorshift64*: deterministic so the content can be re-generated to verify. */
static uint64_t rng_state;
static uint64_t rng_next(void) {
  rng_state ^= rng_state >> 12; rng_state ^= rng_state << 25; rng_state ^= rng_state >> 27;
  return rng_state * 2685821657736338717ULL;
}
#define RNG_SEED 0x9E3779B97F4A7C15ULL

/* CPU work: rounds of xorshift64* on a state of its own, the result kept so the loop is not optimised away. */
static volatile uint64_t spin_sink;
static void spin(long rounds) {
  uint64_t x = spin_sink | 1;
  for (long i = 0; i < rounds; i++) { x ^= x >> 12; x ^= x << 25; x ^= x >> 27; x *= 2685821657736338717ULL; }
  spin_sink = x;
}

static void fill_or_check(unsigned char *mem, size_t size, int check, int *ok) {
  size_t half = (size / 2) & ~(size_t)7;
  rng_state = RNG_SEED;
  for (size_t i = 0; i < half; i += 8) {
    uint64_t v = rng_next();
    if (check) { if (memcmp(mem + i, &v, 8) != 0) { *ok = 0; return; } }
    else memcpy(mem + i, &v, 8);
  }
  for (size_t i = half; i < size; i++) {
    unsigned char v = (unsigned char)(i * 7 + 3);
    if (check) { if (mem[i] != v) { *ok = 0; return; } }
    else mem[i] = v;
  }
}

static void start_files(const char *state_dir) {
  char path[4200];
  snprintf(path, sizeof path, "%s/created.txt", state_dir);
  const char *created = "created before checkpoint\n";
  write_atomic(path, created, strlen(created));
  snprintf(path, sizeof path, "%s/created-dir", state_dir);
  mkdirs(path);
  snprintf(path, sizeof path, "%s/created-dir/nested.txt", state_dir);
  const char *nested = "nested file\n";
  write_atomic(path, nested, strlen(nested));
  /* A second name for created.txt: the layer's hard links must survive as such. */
  char target[4200];
  snprintf(target, sizeof target, "%s/created.txt", state_dir);
  snprintf(path, sizeof path, "%s/created-dir/created-link.txt", state_dir);
  unlink(path);
  (void)!link(target, path);
  const char *modified = "modified by counter\n";
  write_atomic("/etc/to-modify.txt", modified, strlen(modified));
  unlink("/etc/to-delete.txt");
}

/* COUNTER_TCP: the listener, and the two ends of the connection the job holds. */
static int tcp_listener = -1, tcp_client = -1, tcp_server = -1;

static void tcp_connect(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  if (getsockname(tcp_listener, (struct sockaddr *)&a, &len) < 0) return;
  tcp_client = socket(AF_INET, SOCK_STREAM, 0);
  if (tcp_client < 0 || connect(tcp_client, (struct sockaddr *)&a, len) < 0) { perror("counter: connect"); return; }
  tcp_server = accept(tcp_listener, NULL, NULL);
  if (tcp_server < 0) { perror("counter: accept"); return; }
  printf("tcp up\n");
}

static void tcp_start(void) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  tcp_listener = socket(AF_INET, SOCK_STREAM, 0);
  if (tcp_listener < 0 || bind(tcp_listener, (struct sockaddr *)&a, sizeof a) < 0 || listen(tcp_listener, 4) < 0) {
    perror("counter: listen");
    return;
  }
  tcp_connect();
}

static void tcp_tick(void) {
  char b[256];
  if (tcp_client >= 0 && send(tcp_client, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) == 1 &&
      tcp_server >= 0 && recv(tcp_server, b, sizeof b, MSG_DONTWAIT) != 0)
    return;
  printf("tcp broken\n");
  if (tcp_client >= 0) close(tcp_client);
  if (tcp_server >= 0) close(tcp_server);
  tcp_client = tcp_server = -1;
  tcp_connect();
}

#define GHOST_LINE 25 /* "arch ghost line %08lu\n" */

/* Write the ghost file's lines (check = 0) or compare them with what it holds (check = 1). */
static int ghost_lines(int fd, long mb, int check) {
  size_t total = (size_t)mb << 20, lines = total / GHOST_LINE;
  char want[48], have[GHOST_LINE];
  for (size_t i = 0; i < lines; i++) {
    snprintf(want, sizeof want, "arch ghost line %08lu\n", (unsigned long)(i % 100000000UL));
    off_t at = (off_t)(i * GHOST_LINE);
    if (!check) {
      if (pwrite(fd, want, GHOST_LINE, at) != GHOST_LINE) return 0;
    } else if (pread(fd, have, GHOST_LINE, at) != GHOST_LINE || memcmp(want, have, GHOST_LINE) != 0) {
      return 0;
    }
  }
  return 1;
}

/* Whether /proc/locks lists a write lock of this kind (FLOCK, POSIX) of this process on the file open as fd. */
static int lock_held(int fd, const char *which) {
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  FILE *f = fopen("/proc/locks", "r");
  if (!f) return 0;
  char line[256], kind[16], mode[16];
  int pid, found = 0;
  unsigned long ino;
  while (!found && fgets(line, sizeof line, f)) {
    if (sscanf(line, "%*d: %15s %*s %15s %d %*x:%*x:%lu", kind, mode, &pid, &ino) == 4)
      found = !strcmp(kind, which) && !strcmp(mode, "WRITE") && pid == (int)getpid() && ino == (unsigned long)st.st_ino;
  }
  fclose(f);
  return found;
}

int main(void) {
  long interval_ms = env_long("COUNTER_INTERVAL_MS", 100);
  long work = env_long("COUNTER_WORK", 0);
  long mem_mb = env_long("COUNTER_MEM_MB", 0);
  long verify_every = env_long("COUNTER_VERIFY_EVERY", 0);
  long exit_after = env_long("COUNTER_EXIT_AFTER", 0);
  long exit_code = env_long("COUNTER_EXIT_CODE", 0);
  const char *file = getenv("COUNTER_FILE");
  if (!file || !*file) file = "/state/count";
  const char *log = getenv("COUNTER_LOG");
  const char *out = getenv("COUNTER_OUT");

  char dir_buf[4096];
  snprintf(dir_buf, sizeof dir_buf, "%s", file);
  char state_dir[4096];
  snprintf(state_dir, sizeof state_dir, "%s", dirname(dir_buf));
  mkdirs(state_dir);

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_term;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  setvbuf(stdout, NULL, _IOLBF, 0);

  /* One line per fresh start: a restored process never runs this again. */
  char path[4200];
  snprintf(path, sizeof path, "%s/starts", state_dir);
  int sfd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (sfd >= 0) { (void)!write(sfd, "start\n", 6); close(sfd); }

  if (getenv("COUNTER_START_FILES")) start_files(state_dir);

  int ofd = -1;
  if (out && *out) {
    int flags = O_WRONLY | O_CREAT | (getenv("COUNTER_OUT_APPEND") ? O_APPEND : O_TRUNC);
    ofd = open(out, flags, 0644);
    if (ofd < 0) { perror("counter: COUNTER_OUT"); return 1; }
  }

  if (getenv("COUNTER_TCP")) tcp_start();

  const char *lock = getenv("COUNTER_LOCK");
  int lfd_lock = -1;
  if (lock && *lock) {
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 1 };
    lfd_lock = open(lock, O_RDWR | O_CREAT, 0644);
    if (lfd_lock < 0 || flock(lfd_lock, LOCK_EX | LOCK_NB) != 0 || fcntl(lfd_lock, F_SETLK, &fl) != 0) {
      perror("counter: COUNTER_LOCK");
      return 1;
    }
  }

  const char *ghost = getenv("COUNTER_GHOST");
  long ghost_mb = env_long("COUNTER_GHOST_MB", 4);
  int gfd = -1;
  if (ghost && *ghost) {
    gfd = open(ghost, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (gfd < 0 || !ghost_lines(gfd, ghost_mb, 0) || unlink(ghost) != 0) { perror("counter: COUNTER_GHOST"); return 1; }
  }

  unsigned char *mem = NULL;
  size_t mem_size = (size_t)mem_mb << 20;
  if (mem_size) {
    mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("counter: mmap"); return 1; }
    int ok = 1;
    fill_or_check(mem, mem_size, 0, &ok);
  }

  printf("counter start pid=%d mem_mb=%ld\n", (int)getpid(), mem_mb);

  unsigned long count = 0;
  while (!stop_requested) {
    struct timespec req = { interval_ms / 1000, (interval_ms % 1000) * 1000000L }, rem;
    while (nanosleep(&req, &rem) == -1 && errno == EINTR && !stop_requested) req = rem;
    if (stop_requested) break;
    if (work > 0) spin(work);
    count++;
    char line[64];
    int n = snprintf(line, sizeof line, "%lu\n", count);
    write_atomic(file, line, (size_t)n);
    if (log && *log) {
      int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (lfd >= 0) { (void)!write(lfd, line, (size_t)n); close(lfd); }
    }
    if (ofd >= 0) (void)!write(ofd, line, (size_t)n);
    if (tcp_listener >= 0) tcp_tick();
    printf("count %lu\n", count);
    if (mem && verify_every > 0 && count % (unsigned long)verify_every == 0) {
      int ok = 1;
      fill_or_check(mem, mem_size, 1, &ok);
      printf("memcheck %s\n", ok ? "ok" : "FAIL");
      snprintf(path, sizeof path, "%s/memcheck", state_dir);
      write_atomic(path, ok ? "ok\n" : "FAIL\n", ok ? 3 : 5);
    }
    if (lfd_lock >= 0 && verify_every > 0 && count % (unsigned long)verify_every == 0) {
      /* Read from /proc/locks: opening the file again here would drop the record lock at its close. */
      int held = lock_held(lfd_lock, "FLOCK") && lock_held(lfd_lock, "POSIX");
      printf("lockcheck %s\n", held ? "ok" : "FAIL");
    }
    if (gfd >= 0 && verify_every > 0 && count % (unsigned long)verify_every == 0) {
      int ok = ghost_lines(gfd, ghost_mb, 1);
      printf("ghostcheck %s\n", ok ? "ok" : "FAIL");
      snprintf(path, sizeof path, "%s/ghostcheck", state_dir);
      write_atomic(path, ok ? "ok\n" : "FAIL\n", ok ? 3 : 5);
    }
    if (exit_after > 0 && count >= (unsigned long)exit_after) break;
  }
  printf("counter exit %lu\n", count);
  return exit_after > 0 && count >= (unsigned long)exit_after ? (int)exit_code : 0;
}
