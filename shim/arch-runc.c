/*
 * arch-runc's front: a runc-compatible executable for containerd's runc shim
 * (built by `npm run build` into dist/shim/arch-runc; bin/arch-runc links to
 * it).
 *
 * Why C, not sh or Node: containerd calls runc for every container of the
 * node, most of them not ARCH's, and each call pays for what stands before
 * the real runc. On these VMs every exec costs ~2.5 ms: the sh front it
 * replaces paid one for itself and one more for the `grep` of every
 * create's config.json (+7 ms per create). This front is one exec: it
 * decides, then execs the real runc itself, and starts Node only when the
 * call concerns ARCH:
 *   create, run  of a bundle whose config.json mentions ARCH_ENABLE
 *   delete  of a container the Node side created (its marker file lives
 *          in runc's state dir: <root>/<id>/arch.json)
 *   checkpoint, restore  without --criu, of any container (the node's CRIU,
 *          off PATH, with its settings: the Node side adds them), or of
 *          ARCH's
 *   kill  of such a container leaves a note (<root>/<id>/arch.killed) while
 *          its init process lives, so a later delete knows the container
 *          did not exit by itself.
 *   start  of a container the Node side restored (<root>/<id>/arch.restored)
 *          is done here: its processes, held stopped since the restore,
 *          go on (runc would refuse to start processes that exist). Other
 *          starts are runc's.
 * Settings: $ARCH_CONFIG (default /etc/arch/arch.env), overridden by the
 * environment. The front needs three (ARCH_RUNC, ARCH_HOME, ARCH_NODE_BIN);
 * the Node side reads the rest itself (core/settings.ts parses the same
 * KEY=VALUE lines). ARCH_RUNC is the real runc (default: the first runc on
 * PATH that is not this program).
 *
 * The routing is spelled in TypeScript too (core/runc-args.ts, what the
 * Node side reads of a call); test/unit/runc-front-routing.test.ts holds the
 * two to the same choices.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DEFAULT_CONF "/etc/arch/arch.env"
#define MARKER "arch.json"
#define KILLED "arch.killed"
#define RESTORED "arch.restored"

static const char *conf_path;

static void die(int code, const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "arch-runc: ");
  fprintf(stderr, fmt, a, b);
  fputc('\n', stderr);
  exit(code);
}

static char *join(const char *a, const char *b, const char *c) {
  char *s;
  if (asprintf(&s, "%s%s%s", a, b, c) < 0) die(127, "out of memory%s%s", "", "");
  return s;
}

static int is_regular(const char *p) {
  struct stat st;
  return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* A whole small file (state.json, the stamp), NUL-terminated; NULL if unreadable. */
static char *slurp(const char *p, size_t max) {
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  char *buf = malloc(max + 1);
  size_t n = 0;
  ssize_t r;
  while (buf && n < max && (r = read(fd, buf + n, max - n)) > 0) n += (size_t)r;
  close(fd);
  if (buf) buf[n] = 0;
  return buf;
}

/* Whether the file holds `needle`, read in blocks (a CRI spec is often 10-30 KiB on one line). */
static int file_contains(const char *p, const char *needle) {
  size_t k = strlen(needle);
  char buf[65536];
  size_t keep = 0;
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  for (;;) {
    ssize_t r = read(fd, buf + keep, sizeof buf - keep);
    if (r <= 0) break;
    size_t n = keep + (size_t)r;
    if (memmem(buf, n, needle, k)) {
      close(fd);
      return 1;
    }
    /* The needle may straddle two blocks: keep its length less one. */
    keep = n < k - 1 ? n : k - 1;
    memmove(buf, buf + n - keep, keep);
  }
  close(fd);
  return 0;
}

/* SIGCONT every process of cgroup directory `dir` and of the cgroups below it (core/cgroup-freezer.ts signalCgroupTree). */
static void continue_tree(const char *dir, int depth) {
  char *procs = join(dir, "/", "cgroup.procs");
  char *text = slurp(procs, 1 << 22);
  free(procs);
  for (char *p = text; p && *p;) {
    char *end;
    long pid = strtol(p, &end, 10);
    if (end == p) break;
    if (pid > 0) kill((pid_t)pid, SIGCONT);
    p = end;
    while (*p == '\n') p++;
  }
  free(text);
  DIR *d = depth < 64 ? opendir(dir) : NULL;
  struct dirent *e;
  while (d && (e = readdir(d))) {
    if (e->d_type != DT_DIR || strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
    char *sub = join(dir, "/", e->d_name);
    continue_tree(sub, depth + 1);
    free(sub);
  }
  if (d) closedir(d);
}

/*
 * A container create restored (core/shim-state.ts RESTORED_FILE, which holds
 * the cgroup of processes held stopped for the start, or nothing): they go
 * on, and the file is `keep`ed empty (a kill before the start: the start
 * stays ARCH's) or removed (the start). 0 when create did not restore it.
 */
static int go_on_restored(const char *state_dir, int keep) {
  char *file = join(state_dir, "/", RESTORED);
  char *held = is_regular(file) ? slurp(file, PATH_MAX) : NULL;
  if (!held) {
    free(file);
    return 0;
  }
  held[strcspn(held, "\n")] = 0;
  if (held[0] == '/') continue_tree(held, 0);
  if (keep) {
    int fd = held[0] ? open(file, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW) : -1;
    if (fd >= 0) close(fd);
  } else {
    unlink(file);
  }
  free(held);
  free(file);
  return 1;
}

/*
 * The value of KEY=VALUE lines of the settings file, read (never sourced)
 * as sh's `read -r` sees them: leading spaces and an `export ` dropped, one
 * pair of surrounding quotes removed; the last line for a key wins.
 */
static void read_settings(const char *file, char **runc, char **home, char **node_bin) {
  FILE *f = fopen(file, "re");
  if (!f) return;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  while ((len = getline(&line, &cap, f)) >= 0) {
    if (len > 0 && line[len - 1] == '\n') line[--len] = 0;
    char *l = line;
    while (*l == ' ') l++;
    if (strncmp(l, "export ", 7) == 0) l += 7;
    char *eq = strchr(l, '=');
    char **slot = NULL;
    if (strncmp(l, "ARCH_RUNC=", 10) == 0) slot = runc;
    else if (strncmp(l, "ARCH_HOME=", 10) == 0) slot = home;
    else if (strncmp(l, "ARCH_NODE_BIN=", 14) == 0) slot = node_bin;
    if (!slot || !eq) continue;
    char *v = eq + 1;
    size_t n = strlen(v);
    if (n >= 2 && ((v[0] == '"' && v[n - 1] == '"') || (v[0] == '\'' && v[n - 1] == '\''))) {
      v[n - 1] = 0;
      v++;
    }
    free(*slot);
    *slot = strdup(v);
  }
  free(line);
  fclose(f);
}

/* The environment's value when set and not empty, else the file's (sh: `[ -n "$env" ] && VAR=$env`). */
static char *setting(const char *name, char *from_file) {
  const char *env = getenv(name);
  if (env && *env) return strdup(env);
  return from_file ? from_file : strdup("");
}

/* The first executable runc on PATH that is not this program (called through a `runc` link, it would loop). */
static char *runc_on_path(const char *self) {
  const char *path = getenv("PATH");
  if (!path) return NULL;
  char *copy = strdup(path);
  char *rest = copy;
  char *found = NULL;
  for (;;) {
    char *colon = strchr(rest, ':');
    if (colon) *colon = 0;
    char *cand = join(rest, "/", "runc");
    char real[PATH_MAX];
    if (access(cand, X_OK) == 0 && !(realpath(cand, real) && strcmp(real, self) == 0)) {
      found = cand;
      break;
    }
    free(cand);
    if (!colon) break;
    rest = colon + 1;
  }
  free(copy);
  return found;
}

/* `stat -L --printf '%d:%i:%s:%Y:%Z;'` of each file (core/shim-snapshot.ts STAT_FORMAT); NULL if one is missing. */
static char *identity_of(const char *node, const char *libs) {
  size_t cap = 4096, n = 0;
  char *out = malloc(cap);
  char *copy = strdup(libs);
  const char *file = node;
  char *save = NULL;
  char *next = strtok_r(copy, " \t", &save);
  while (file) {
    struct stat st;
    if (stat(file, &st) != 0 || cap - n < 128) {
      free(out);
      free(copy);
      return NULL;
    }
    n += (size_t)snprintf(out + n, cap - n, "%ju:%ju:%jd:%jd:%jd;", (uintmax_t)st.st_dev, (uintmax_t)st.st_ino,
                          (intmax_t)st.st_size, (intmax_t)st.st_mtime, (intmax_t)st.st_ctime);
    file = next;
    next = next ? strtok_r(NULL, " \t", &save) : NULL;
  }
  free(copy);
  return out;
}

/* One stamp line as sh's `read -r` gives it: blanks at both ends dropped. */
static char *stamp_line(char **cursor) {
  char *s = *cursor;
  char *nl = strchr(s, '\n');
  if (nl) {
    *nl = 0;
    *cursor = nl + 1;
  } else {
    *cursor = s + strlen(s);
  }
  while (*s == ' ' || *s == '\t') s++;
  size_t n = strlen(s);
  while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = 0;
  return s;
}

/* The call concerns ARCH: hand it to the Node side, with the same arguments. */
static void exec_node(int argc, char **argv, const char *self, char *runc, char *home, const char *node_bin) {
  if (!*home) {
    /* <home>/dist/shim/arch-runc */
    char *h = strdup(self);
    for (int i = 0; i < 3; i++) {
      char *slash = strrchr(h, '/');
      if (slash) *slash = 0;
    }
    home = *h ? h : strdup("/");
  }
  setenv("ARCH_RUNC", runc, 1);
  setenv("ARCH_HOME", home, 1);
  /*
   * The shim makes no TLS connections and takes no Node options: extra CA
   * certificates are loaded at every Node start (~35 ms here), and options
   * meant for other Node programs have no business in containerd's runtime.
   */
  unsetenv("NODE_EXTRA_CA_CERTS");
  unsetenv("NODE_OPTIONS");
  /*
   * glibc malloc settings for the Node side only (core/malloc-tunables.ts
   * says why: a restore's decryption and decompression ran 4-5x slower with
   * glibc's heap trimming; the same string is there, in bin/arch-worker and
   * in bin/arch-cli). An administrator's own GLIBC_TUNABLES is left alone.
   * The Node side removes them again before it starts runc or CRIU.
   */
  if (!getenv("GLIBC_TUNABLES")) {
    setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=67108864:glibc.malloc.mmap_threshold=33554432:glibc.malloc.hugetlb=1", 1);
    setenv("ARCH_MALLOC_TUNED", "1", 1);
  }
  /* libuv's thread pool for the Node side (core/thread-pool.ts; the same in bin/arch-worker and bin/arch-cli). */
  setenv("UV_THREADPOOL_SIZE", "16", 0);
  char **args = calloc((size_t)argc + 5, sizeof *args);
  /*
   * From the start-up snapshot (modules loaded, restore path compiled: ~20
   * ms sooner), run by the very Node that built it: any other Node would
   * crash on it. Its stamp holds that Node's path, its libnode if any, and
   * `stat -L` of both as they were (scripts/build-shim-snapshot.ts).
   */
  char *blob = join(home, "/dist/shim/", "arch-runc.blob");
  char *stamp = join(blob, ".stamp", "");
  char *text = slurp(stamp, 1 << 16);
  if (text) {
    char *cur = text;
    char *snode = stamp_line(&cur);
    char *libs = stamp_line(&cur);
    char *want = stamp_line(&cur);
    char *have = *snode ? identity_of(snode, libs) : NULL;
    if ((!*node_bin || strcmp(node_bin, snode) == 0) && have && strcmp(have, want) == 0) {
      args[0] = snode;
      args[1] = "--snapshot-blob";
      args[2] = blob;
      args[3] = "--";
      for (int i = 1; i < argc; i++) args[3 + i] = argv[i];
      execv(snode, args);
    }
  }
  /* Otherwise the one bundled file, started with V8's code cache (shim/start.cts). */
  const char *bin = *node_bin ? node_bin : "node";
  args[0] = (char *)bin;
  args[1] = join(home, "/dist/shim/", "start.cjs");
  for (int i = 1; i < argc; i++) args[1 + i] = argv[i];
  args[argc + 1] = NULL;
  execvp(bin, args);
  die(127, "cannot run Node (%s): %s; set ARCH_NODE_BIN", bin, strerror(errno));
}

int main(int argc, char **argv) {
  conf_path = getenv("ARCH_CONFIG");
  if (!conf_path || !*conf_path) conf_path = DEFAULT_CONF;
  char *f_runc = NULL, *f_home = NULL, *f_node = NULL;
  read_settings(conf_path, &f_runc, &f_home, &f_node);
  char *runc = setting("ARCH_RUNC", f_runc);
  char *home = setting("ARCH_HOME", f_home);
  char *node_bin = setting("ARCH_NODE_BIN", f_node);

  char self[PATH_MAX];
  if (!realpath("/proc/self/exe", self)) snprintf(self, sizeof self, "%s", argv[0]);

  /* Calling ourselves (ARCH_RUNC or a `runc` on PATH that is this program) would loop forever: the exec marks it. */
  const char *marked = getenv("ARCH_RUNC_EXEC");
  if (marked && *marked)
    die(127, "the real runc (%s) is arch-runc itself; set ARCH_RUNC in %s to the real runc (e.g. /usr/sbin/runc)",
        marked, conf_path);
  if (!*runc) {
    runc = runc_on_path(self);
    if (!runc) die(127, "no runc found on PATH; set ARCH_RUNC in %s%s", conf_path, "");
  }

  /* The subcommand after runc's global options (those below take a value). */
  const char *root = "/run/runc";
  const char *cmd = "";
  int cmd_at = argc;
  int criu = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--root") == 0) {
      if (i + 1 < argc) root = argv[i + 1];
      i++;
    } else if (strncmp(a, "--root=", 7) == 0) {
      root = a + 7;
    } else if (strcmp(a, "--criu") == 0) {
      criu = 1;
      i++;
    } else if (strncmp(a, "--criu=", 7) == 0) {
      criu = 1;
    } else if (strcmp(a, "--log") == 0 || strcmp(a, "--log-format") == 0 || strcmp(a, "--rootless") == 0) {
      i++;
    } else if (a[0] != '-') {
      cmd = a;
      cmd_at = i;
      break;
    }
  }
  /* The container id is the last argument for the subcommands handled here. */
  const char *id = argc > 1 ? argv[argc - 1] : "";
  char *state_dir = join(root, "/", id);
  char *marker = join(state_dir, "/", MARKER);
  int to_node = 0;

  if (strcmp(cmd, "create") == 0 || strcmp(cmd, "run") == 0) {
    const char *bundle = ".";
    for (int i = 1; i < argc; i++) {
      if (strcmp(argv[i], "--bundle") == 0 || strcmp(argv[i], "-b") == 0) {
        if (i + 1 < argc) bundle = argv[i + 1];
        break;
      }
      if (strncmp(argv[i], "--bundle=", 9) == 0) {
        bundle = argv[i] + 9;
        break;
      }
    }
    char *spec = join(bundle, "/", "config.json");
    to_node = is_regular(spec) && file_contains(spec, "ARCH_ENABLE");
  } else if (strcmp(cmd, "start") == 0) {
    if (is_regular(marker) && go_on_restored(state_dir, 0)) return 0;
  } else if (strcmp(cmd, "delete") == 0) {
    to_node = is_regular(marker);
  } else if (strcmp(cmd, "checkpoint") == 0 || strcmp(cmd, "restore") == 0) {
    /* Both run CRIU for far longer than Node takes to start. */
    to_node = !criu || is_regular(marker);
  } else if (strcmp(cmd, "kill") == 0) {
    /* kill ID [SIGNAL]: the id is the first positional after "kill". */
    const char *kid = NULL;
    for (int i = cmd_at + 1; i < argc; i++)
      if (argv[i][0] != '-') {
        kid = argv[i];
        break;
      }
    /*
     * Only a kill while the init process lives counts: after a natural exit
     * containerd's shim itself sends `kill --all` to clean up, and that exit
     * must still let delete remove the finished job's checkpoint.
     */
    if (kid) {
      char *dir = join(root, "/", kid);
      char *state = join(dir, "/", "state.json");
      char *text = is_regular(join(dir, "/", MARKER)) ? slurp(state, 1 << 20) : NULL;
      const char *key = "\"init_process_pid\":";
      char *at = text ? strstr(text, key) : NULL;
      if (at) {
        at += strlen(key);
        size_t digits = strspn(at, "0123456789");
        at[digits] = 0;
        struct stat st;
        if (digits && stat(join("/proc/", at, ""), &st) == 0 && S_ISDIR(st.st_mode)) {
          int fd = open(join(dir, "/", KILLED), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0666);
          if (fd >= 0) close(fd);
          /* Held for a start that has not come: they take the signal as the running job they are. */
          go_on_restored(dir, 1);
        }
      }
    }
  }
  if (to_node) exec_node(argc, argv, self, runc, home, node_bin);

  setenv("ARCH_RUNC_EXEC", runc, 1);
  argv[0] = runc;
  execvp(runc, argv);
  die(127, "cannot run the real runc (%s): %s; set ARCH_RUNC in the settings file to the real runc", runc,
      strerror(errno));
  return 127;
}
