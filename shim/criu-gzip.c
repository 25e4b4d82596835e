/*
 * The `gzip` that CRIU's tar finds first on its PATH (core/criu-path.ts puts
 * dist/shim/criu-path at the front of the PATH runc hands to CRIU).
 *
 * CRIU keeps the files of a container's own tmpfs mounts (Docker's /dev/shm,
 * `--tmpfs` scratch directories, /dev) as `tar --create --gzip` and puts them
 * back with `tar --extract --gzip`; tar runs `gzip` (no argument) and
 * `gzip -d`. gzip compresses at about 30 MB/s here, whatever the data: the
 * 128 MiB a job keeps in a tmpfs cost 4 s of a frozen checkpoint. ARCH does
 * not need that compression (store format 2 compresses every chunk with
 * zstd, and a job's data in memory is mostly incompressible), so this writes
 * the same format with stored deflate blocks (zlib level 0) at memory speed;
 * any gzip reads it, this node's and any other's. `-d` inflates any gzip
 * stream with zlib (also those that gzip itself wrote, concatenated members
 * included, and trailing zeros ignored as gzip ignores them), several times
 * faster than gzip's own -d. Any other use runs the system's gzip with the
 * same arguments.
 *
 * Errors go to stderr ("gzip: ...") with exit status 1, as gzip's do; tar
 * then fails and CRIU says "Can't dump tmpfs content" or "Can't restore
 * tmpfs content".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Large enough to keep syscalls rare. */
#define IO_BYTES (1 << 20)

static unsigned char in_buf[IO_BYTES];
static unsigned char out_buf[IO_BYTES + 4096];

static int fail(const char *what, const char *detail) {
  fprintf(stderr, "gzip: %s: %s\n", what, detail);
  return 1;
}

static int write_all(const unsigned char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(STDOUT_FILENO, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static ssize_t read_into(unsigned char *at, size_t n) {
  for (;;) {
    ssize_t r = read(STDIN_FILENO, at, n);
    if (r >= 0 || errno != EINTR) return r;
  }
}

static ssize_t read_some(void) { return read_into(in_buf, IO_BYTES); }

/* Drains the stream's output buffer to stdout whenever it is full (or `flush`). */
static int drain(z_stream *s, int flush) {
  size_t have = sizeof out_buf - s->avail_out;
  if (have == 0 || (!flush && s->avail_out > 0)) return 0;
  if (write_all(out_buf, have) < 0) return -1;
  s->next_out = out_buf;
  s->avail_out = sizeof out_buf;
  return 0;
}

static int compress_stdin(void) {
  z_stream s;
  memset(&s, 0, sizeof s);
  /* windowBits 15 + 16: a gzip header and trailer; level 0: stored blocks. */
  if (deflateInit2(&s, 0, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) return fail("deflate", "cannot start");
  s.next_out = out_buf;
  s.avail_out = sizeof out_buf;
  for (;;) {
    ssize_t r = read_some();
    if (r < 0) return fail("stdin", strerror(errno));
    s.next_in = in_buf;
    s.avail_in = (uInt)r;
    int mode = r == 0 ? Z_FINISH : Z_NO_FLUSH;
    int ret;
    do {
      ret = deflate(&s, mode);
      if (ret == Z_STREAM_ERROR) return fail("deflate", "stream error");
      if (drain(&s, 0) < 0) return fail("stdout", strerror(errno));
    } while (s.avail_in > 0 || (mode == Z_FINISH && ret != Z_STREAM_END));
    if (mode == Z_FINISH) break;
  }
  if (drain(&s, 1) < 0) return fail("stdout", strerror(errno));
  deflateEnd(&s);
  return 0;
}

/*
 * After a member's end: another member (gzip writes them when asked to
 * append), or what gzip -d ignores: zero bytes (tar pads what it writes to
 * a whole record: CRIU's archives of a user namespace's tmpfs end so), or
 * other trailing bytes (gzip warns and exits 2). 1: another member follows;
 * 0: the end; 2: trailing garbage; -1: a read error.
 */
static int after_member(z_stream *s) {
  /* The magic may straddle two reads: keep what is left and read on until there are 2 bytes or the end. */
  while (s->avail_in < 2) {
    memmove(in_buf, s->next_in, s->avail_in);
    s->next_in = in_buf;
    ssize_t r = read_into(in_buf + s->avail_in, IO_BYTES - s->avail_in);
    if (r < 0) return -1;
    if (r == 0) break;
    s->avail_in += (uInt)r;
  }
  if (s->avail_in == 0) return 0;
  /* A member's first byte and then the end: a member cut short (gzip says so too). */
  if (s->next_in[0] == 0x1f && (s->avail_in == 1 || s->next_in[1] == 0x8b)) return 1;
  /* Zeros to the end are padding; anything else is garbage. */
  for (;;) {
    for (uInt i = 0; i < s->avail_in; i++)
      if (s->next_in[i] != 0) return 2;
    ssize_t r = read_some();
    if (r < 0) return -1;
    if (r == 0) return 0;
    s->next_in = in_buf;
    s->avail_in = (uInt)r;
  }
}

static int decompress_stdin(void) {
  z_stream s;
  memset(&s, 0, sizeof s);
  if (inflateInit2(&s, 15 + 16) != Z_OK) return fail("inflate", "cannot start");
  s.next_out = out_buf;
  s.avail_out = sizeof out_buf;
  for (;;) {
    if (s.avail_in == 0) {
      ssize_t r = read_some();
      if (r < 0) return fail("stdin", strerror(errno));
      if (r == 0) return fail("stdin", s.total_in == 0 ? "unexpected end of file (empty input)" : "unexpected end of file");
      s.next_in = in_buf;
      s.avail_in = (uInt)r;
    }
    int ret = inflate(&s, Z_NO_FLUSH);
    if (ret != Z_OK && ret != Z_BUF_ERROR && ret != Z_STREAM_END)
      return fail("stdin", s.msg ? s.msg : "not in gzip format");
    if (drain(&s, ret == Z_STREAM_END) < 0) return fail("stdout", strerror(errno));
    if (ret != Z_STREAM_END) continue;
    int next = after_member(&s);
    if (next < 0) return fail("stdin", strerror(errno));
    if (next == 0) break;
    if (next == 2) {
      fprintf(stderr, "gzip: stdin: decompression OK, trailing garbage ignored\n");
      inflateEnd(&s);
      return 2;
    }
    if (inflateReset(&s) != Z_OK) return fail("inflate", "cannot restart");
  }
  inflateEnd(&s);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 1) return compress_stdin();
  if (argc == 2 && strcmp(argv[1], "-d") == 0) return decompress_stdin();
  /* Not tar's use: the system's gzip, as if this one were not on the PATH. */
  const char *system_gzip[] = {"/usr/bin/gzip", "/bin/gzip"};
  for (size_t i = 0; i < sizeof system_gzip / sizeof *system_gzip; i++) {
    argv[0] = (char *)system_gzip[i];
    execv(system_gzip[i], argv);
  }
  return fail("exec", "no system gzip at /usr/bin/gzip or /bin/gzip");
}
