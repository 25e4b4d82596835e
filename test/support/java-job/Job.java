// A batch job as JVM users write them, for ARCH's workload tests: the Java twin
// of go-job.go, compiled by the host's javac and run on a runtime jlink makes
// from the host's JDK (JAVA_IMAGE in images.ts).
//
// Its progress lives in memory (a running sum it checks against a closed
// form, and a 64 MiB array whose digest it checks), and it prints one line
// per step: "javajob <step> jvm ok" or "javajob <step> jvm FAIL <what failed>".
// It appends "start" to $JAVAJOB_STATE/starts (default /state) when it
// starts, so a restored job (which does not start again) is told from a fresh
// one. Each step leans on what the JVM does by itself: a thread pool of
// futures, a ScheduledExecutorService heartbeat, a loopback TCP server on its
// own thread, a child process (started through jspawnhelper), a file kept
// open and forced to disk (FileChannel), its heap moved by the collector
// (garbage made every step), its perf data file mapped in /tmp, and
// System.nanoTime watched as a stall watchdog does.
//
// Written for Java 17 (Debian 12's JDK), the oldest the tests may find.
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.io.PrintWriter;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

public final class Job {
  static final int STEP = 16;
  static final int WORKERS = 4;

  static long sumOfSquares(long from, long to) {
    long t = 0;
    for (long x = from; x < to; x++) t += x * x;
    return t;
  }

  /** The sum of squares 0..n-1. */
  static long expected(long n) {
    return (n - 1) * n * (2 * n - 1) / 6;
  }

  static String digest(byte[] data) throws Exception {
    return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
  }

  public static void main(String[] args) throws Exception {
    String stateEnv = System.getenv("JAVAJOB_STATE");
    Path state = Path.of(stateEnv == null ? "/state" : stateEnv);
    Files.createDirectories(state);
    Files.writeString(state.resolve("starts"), "start\n", StandardOpenOption.CREATE, StandardOpenOption.APPEND);
    System.out.println("javajob start jvm");

    ExecutorService pool = Executors.newFixedThreadPool(WORKERS);
    // An echo server on loopback, in the job's own network namespace.
    ServerSocket server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
    Thread serving = new Thread(() -> {
      while (true) {
        try (Socket c = server.accept()) {
          String line = new BufferedReader(new InputStreamReader(c.getInputStream(), StandardCharsets.UTF_8)).readLine();
          PrintWriter w = new PrintWriter(c.getOutputStream(), true, StandardCharsets.UTF_8);
          w.println(line);
        } catch (Exception e) {
          fail(e);
        }
      }
    }, "echo-server");
    serving.setDaemon(true);
    serving.start();
    // A heartbeat.
    AtomicLong beats = new AtomicLong();
    ScheduledExecutorService timer = Executors.newSingleThreadScheduledExecutor();
    timer.scheduleAtFixedRate(beats::incrementAndGet, 20, 20, TimeUnit.MILLISECONDS);
    // Data the job holds: 64 MiB, its digest taken now.
    byte[] data = new byte[64 << 20];
    new Random(7).nextBytes(data);
    String dataDigest = digest(data);
    // Its steps log, kept open and forced to disk each step.
    FileChannel steps = FileChannel.open(state.resolve("steps.log"), StandardOpenOption.CREATE,
        StandardOpenOption.WRITE, StandardOpenOption.APPEND);

    long total = 0;
    long last = System.nanoTime();
    long lastBeats = beats.get();
    List<byte[]> garbage = new ArrayList<>();
    for (long n = 1;; n++) {
      List<String> failed = new ArrayList<>();
      long gap = System.nanoTime() - last;
      if (gap >= TimeUnit.SECONDS.toNanos(3)) failed.add(String.format("monotonic gap %.1f s", gap / 1e9));
      last = System.nanoTime();
      long from = (n - 1) * STEP;
      List<Future<Long>> shares = new ArrayList<>();
      for (int i = 0; i < WORKERS; i++) {
        long a = from + (long) STEP * i / WORKERS, b = from + (long) STEP * (i + 1) / WORKERS;
        shares.add(pool.submit(() -> sumOfSquares(a, b)));
      }
      for (Future<Long> f : shares) total += f.get(10, TimeUnit.SECONDS);
      if (total != expected(n * STEP)) failed.add("sum " + total + " is not " + expected(n * STEP));
      String said = echo(server.getLocalPort(), n);
      if (!String.valueOf(n).equals(said)) failed.add("echo server said " + said);
      Process child = new ProcessBuilder("/bin/sh", "-c", "echo step " + n).redirectErrorStream(true).start();
      String out = new String(child.getInputStream().readAllBytes(), StandardCharsets.UTF_8).trim();
      if (!child.waitFor(10, TimeUnit.SECONDS) || child.exitValue() != 0 || !out.equals("step " + n))
        failed.add("child said " + out);
      // The data, checked whole every 10 steps.
      if (n % 10 == 0 && !digest(data).equals(dataDigest)) failed.add("data digest changed");
      // Garbage enough for the collector to move the heap now and then.
      garbage.add(new byte[1 << 20]);
      if (garbage.size() > 32) garbage.clear();
      long b = beats.get();
      if (b == lastBeats && n > 1) failed.add("heartbeat stopped");
      lastBeats = b;
      steps.write(ByteBuffer.wrap((n + "\n").getBytes(StandardCharsets.UTF_8)));
      steps.force(false);
      System.out.println(failed.isEmpty() ? "javajob " + n + " jvm ok"
          : "javajob " + n + " jvm FAIL " + String.join("; ", failed));
      Path tmp = state.resolve("count.tmp");
      Files.writeString(tmp, n + "\n");
      Files.move(tmp, state.resolve("count"), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
      Thread.sleep(200);
    }
  }

  /** Sends n to the job's own server and returns what came back. */
  static String echo(int port, long n) {
    try (Socket c = new Socket(InetAddress.getLoopbackAddress(), port)) {
      c.setSoTimeout(5000);
      new PrintWriter(c.getOutputStream(), true, StandardCharsets.UTF_8).println(n);
      return new BufferedReader(new InputStreamReader(c.getInputStream(), StandardCharsets.UTF_8)).readLine();
    } catch (Exception e) {
      return "(" + e + ")";
    }
  }

  static void fail(Exception e) {
    System.out.println("javajob error: " + e);
    System.exit(1);
  }
}
