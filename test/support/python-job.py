"""A batch job as Python users write them, for ARCH's workload tests.

Its progress lives in memory (a running sum it checks against a closed
form), the work is spread over processes, and it prints one line per step:
"pyjob <step> <mode> ok|FAIL". It appends "start" to $PYJOB_STATE/starts
(default /state) when it starts, so a restored job (which does not start
again) is told from a fresh one. It writes the step to $PYJOB_STATE/count,
as the counter does.

PYJOB_MODE picks how the work is spread:
  pool        multiprocessing.Pool (fork): pipes, a semaphore, handler threads
  forkserver  the same with the forkserver start method (a unix socket server)
  queue       a producer Process feeding a consumer through multiprocessing.Queue
  threads     a ThreadPoolExecutor and a threading.Timer heartbeat
  shm         workers adding into multiprocessing.shared_memory (POSIX shm in /dev/shm)
  inotify     an inotify watch on a directory it writes to (as watchdog does): a step
              counts only once the watch has reported its write
  sqlite      keeps its progress in a SQLite database in $PYJOB_STATE (progress.db, the
              connection held open, one row of ~6 KiB per step in its own transaction,
              so the file grows and its pages change in place); a step counts only when
              the database agrees with memory: as many rows as steps, the last one this
              step's total, and the database intact (PRAGMA quick_check)
  mmap        keeps its running sum in a file in $PYJOB_STATE (sums.bin) that it maps shared
              and writable with the C library's mmap and then closes (as a C program, Java's
              MappedByteBuffer or a NumPy memmap whose file object is gone do): no descriptor
              is left open, every write goes through memory; a step counts only when the
              file's sum is the one the job has in memory
  clock       paces its steps with Event.wait(0.2) (a deadline on the monotonic clock, as
              time.sleep, queue timeouts and rate limiters keep theirs) and watches that clock,
              as a stall watchdog does: a step counts only when the monotonic clock moved
              forward by less than 3 s since the step before (its line ends "gap <seconds> ok")
  bigmem      $PYJOB_WORKERS worker processes (default 3), each holding $PYJOB_MB MiB
              (default 128) of random data in memory and a pipe to the job; each step
              every worker checks one MiB of its data against the digest it took when
              it made it, and adds its share of the sum
  unix        serves a control socket (AF_UNIX, bound at $PYJOB_STATE/control.sock, as
              supervisors, local RPC and gunicorn do) from a thread; each step connects to it,
              sends the step and counts it only when the echo comes back
  asyncio     an asyncio event loop driving a coprocess (cat) through pipes, watching it
              through a pidfd (os.pidfd_open, as asyncio's PidfdChildWatcher does from Python
              3.12), and running a short subprocess each step: a step counts only when the
              coprocess echoed its sum, the subprocess printed the step, and the coprocess lives
  kernelfds   waits on an epoll set for a periodic timerfd (monotonic clock), a signalfd (SIGUSR1,
              blocked, which it sends itself every step) and an eventfd through which a helper
              thread hands over half of each step's sum; a forked child adds the other half into a
              memfd both map shared, while an interval timer (setitimer) rings a SIGALRM handler;
              a step counts only when all five answered and the memfd's content read through its
              descriptor agrees with the mapping
  sysv        a forked child works through System V IPC, as PostgreSQL's, Oracle's and older HPC
              code do: a keyed shared memory segment holds the running sum, a semaphore set
              hands each step over and back, a message queue carries the child's answer; each
              step also a short child finds the segment by its key (shmget, shmat) and reads
              the step the job wrote there
  fdpass      hands its work to a forked worker as file descriptors over a UNIX socket
              (socket.send_fds, as PyTorch's DataLoader workers share tensors and
              multiprocessing's reduction passes handles): each step's range in a memfd,
              sent three steps ahead, so descriptors are always in flight in the socket's
              queue; the worker reads each after a pause and answers through a pipe
  io_uring    opens an io_uring instance where the kernel lets it and holds it while it works
              (as libuv does from 1.49, or tokio-uring and liburing-based I/O), falling back to
              plain calls where io_uring_setup fails, as they all do; its first line says which
              ("pyjob io_uring held" or "pyjob io_uring refused: errno N")
  spawnwait   at step 10 starts a child with os.posix_spawn (as subprocess does) whose first file action
              opens a FIFO for reading: glibc's child, which shares the job's memory (vfork), waits there
              for a writer while the job waits for it in vfork, in uninterruptible sleep (D), until a forked
              helper opens the FIFO's other end 5 s later ("pyjob spawnwait waiting" is printed before;
              posix_spawn holds the GIL, so no thread of the job could); then the child runs Python and exits
  userfaultfd holds a userfaultfd (user-mode faults only, which needs no privilege) while it
              works, as VMMs and memory tools do: no checkpoint can take it
"""
import os
import sys
import time

MODE = os.environ.get("PYJOB_MODE", "pool")
# Where "count" and "starts" go: /state in the image, a shared work dir under Kubernetes.
STATE = os.environ.get("PYJOB_STATE", "/state")
# PYJOB_STEPS_LOG=1: each step also appends its number to $PYJOB_STATE/steps.log, opening and closing it.
STEPS_LOG = os.environ.get("PYJOB_STEPS_LOG") == "1"
# PYJOB_STEP_DIRS=1: each step makes its own output directory $PYJOB_STATE/out/<step> (os.mkdir, which
# fails where one is there already, as a job claiming a step's output does) and writes its sum in it.
STEP_DIRS = os.environ.get("PYJOB_STEP_DIRS") == "1"
# PYJOB_INPUTS=1: the job consumes an input file per step, as queue-directory jobs do: a fresh start
# writes $PYJOB_STATE/in/<n> (holding n) for n in 1..INPUTS; step n reads in/<n> (the step fails
# when it is missing or holds another number), then deletes it (odd steps) or moves it to done/<n>.
INPUTS = 2000 if os.environ.get("PYJOB_INPUTS") == "1" else 0
STEP = 16


def square(x):
    return x * x


def expected(n):
    # sum of squares 0..n-1
    return (n - 1) * n * (2 * n - 1) // 6


def write_count(step):
    tmp = f"{STATE}/count.tmp"
    with open(tmp, "w") as f:
        f.write(f"{step}\n")
    os.replace(tmp, f"{STATE}/count")


def consume_input(step):
    """True when in/<step> held the step's number; then it is consumed."""
    name = f"{STATE}/in/{step}"
    try:
        with open(name) as f:
            held = f.read()
    except FileNotFoundError:
        return False
    if step % 2:
        os.remove(name)
    else:
        os.makedirs(f"{STATE}/done", exist_ok=True)
        os.rename(name, f"{STATE}/done/{step}")
    return held == str(step)


def report(step, total):
    ok = "ok" if total == expected(step * STEP) and (not INPUTS or consume_input(step)) else "FAIL"
    write_count(step)
    if STEP_DIRS:
        os.makedirs(f"{STATE}/out", exist_ok=True)
        os.mkdir(f"{STATE}/out/{step}")
        with open(f"{STATE}/out/{step}/sum", "w") as f:
            f.write(f"{total}\n")
    if STEPS_LOG:
        # Opened and closed at every step, as results are often appended.
        with open(f"{STATE}/steps.log", "a") as f:
            f.write(f"{step}\n")
    print(f"pyjob {step} {MODE} {ok}", flush=True)


def run_steps(step_sum):
    """The job's loop: step_sum(step) gives that step's sum of squares, kept in memory."""
    total = 0
    step = 0
    while True:
        total += step_sum(step)
        step += 1
        report(step, total)
        time.sleep(0.1)


def squares_of(step):
    return range(step * STEP, (step + 1) * STEP)


def run_clock():
    import threading

    wake = threading.Event()
    total = 0
    step = 0
    last = time.monotonic()
    while True:
        wake.wait(0.2)
        now = time.monotonic()
        gap, last = now - last, now
        total += sum(square(x) for x in squares_of(step))
        step += 1
        ok = 0 <= gap < 3 and total == expected(step * STEP)
        write_count(step)
        print(f"pyjob {step} {MODE} gap {gap:.3f} {'ok' if ok else 'FAIL'}", flush=True)


def run_pool(method):
    import multiprocessing as mp

    with mp.get_context(method).Pool(2) as pool:
        run_steps(lambda step: sum(pool.map(square, squares_of(step))))


def produce(q, start):
    i = start
    while True:
        q.put(i * i)
        i += 1


def run_queue():
    import multiprocessing as mp

    q = mp.get_context("fork").Queue(maxsize=64)
    p = mp.get_context("fork").Process(target=produce, args=(q, 0), daemon=True)
    p.start()
    run_steps(lambda _step: sum(q.get() for _ in range(STEP)))


def run_threads():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    beats = [0]

    def beat():
        beats[0] += 1
        t = threading.Timer(0.05, beat)
        t.daemon = True
        t.start()

    beat()
    with ThreadPoolExecutor(max_workers=3) as ex:
        run_steps(lambda step: sum(ex.map(square, squares_of(step))))


def add_squares(name, slot, base):
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name=name)
    buf = shm.buf
    cur = int.from_bytes(buf[slot * 16:(slot + 1) * 16], "little")
    for x in range(base + slot, base + STEP, 2):
        cur += x * x
    buf[slot * 16:(slot + 1) * 16] = cur.to_bytes(16, "little")
    del buf
    shm.close()


def run_shm():
    import multiprocessing as mp
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(name="pyjob-sums", create=True, size=4096)
    ctx = mp.get_context("fork")
    step = 0
    while True:
        base = step * STEP
        procs = [ctx.Process(target=add_squares, args=("pyjob-sums", s, base)) for s in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        step += 1
        total = sum(int.from_bytes(shm.buf[s * 16:(s + 1) * 16], "little") for s in range(2))
        report(step, total)
        time.sleep(0.1)


def run_inotify():
    import ctypes
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    watched = f"{STATE}/watched"
    os.makedirs(watched, exist_ok=True)
    fd = libc.inotify_init1(0)
    IN_CLOSE_WRITE = 0x8
    if fd < 0 or libc.inotify_add_watch(fd, watched.encode(), IN_CLOSE_WRITE) < 0:
        sys.exit(f"inotify: errno {ctypes.get_errno()}")

    def step_sum(step):
        name = str(step % 4)
        with open(f"{watched}/{name}", "w") as f:
            f.write(str(step))
        # Blocks until the watch reports the write: a watch lost in a restore stops the job here.
        data = os.read(fd, 4096)
        _wd, _mask, _cookie, size = struct.unpack_from("iIII", data)
        got = data[16:16 + size].rstrip(b"\0").decode()
        return sum(map(square, squares_of(step))) if got == name else 0

    run_steps(step_sum)


def run_sqlite():
    import sqlite3

    db = sqlite3.connect(f"{STATE}/progress.db", isolation_level=None)
    db.execute("CREATE TABLE IF NOT EXISTS steps (step INTEGER PRIMARY KEY, total INTEGER, pad BLOB)")
    total = 0
    step = 0
    while True:
        total += sum(map(square, squares_of(step)))
        step += 1
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO steps VALUES (?, ?, ?)", (step, total, os.urandom(6000)))
            db.execute("COMMIT")
            rows, last = db.execute("SELECT count(*), (SELECT total FROM steps WHERE step = ?) FROM steps", (step,)).fetchone()
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            agrees = rows == step and last == total and check == "ok"
        except sqlite3.Error as err:
            print(f"pyjob {step} {MODE} FAIL {err}", flush=True)
            if db.in_transaction:
                db.execute("ROLLBACK")
            time.sleep(0.5)
            continue
        write_count(step)
        print(f"pyjob {step} {MODE} {'ok' if agrees and total == expected(step * STEP) else 'FAIL'}", flush=True)
        time.sleep(0.1)


def run_mmap():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    PROT_READ, PROT_WRITE, MAP_SHARED = 1, 2, 1
    fd = os.open(f"{STATE}/sums.bin", os.O_RDWR | os.O_CREAT, 0o644)
    os.ftruncate(fd, 4096)
    addr = libc.mmap(None, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        sys.exit(f"mmap: errno {ctypes.get_errno()}")
    os.close(fd)
    # [0]: the running sum, [1]: the steps it holds; the job's own copy is in memory.
    mapped = (ctypes.c_uint64 * 2).from_address(addr)
    mapped[0], mapped[1] = 0, 0
    total = 0
    step = 0
    while True:
        held = mapped[1]
        agrees = mapped[0] == total and held == step
        total += sum(map(square, squares_of(step)))
        step += 1
        mapped[0], mapped[1] = total, step
        write_count(step)
        ok = agrees and total == expected(step * STEP)
        detail = "" if agrees else f" (the file held step {held}, memory step {step - 1})"
        print(f"pyjob {step} {MODE} {'ok' if ok else 'FAIL'}{detail}", flush=True)
        time.sleep(0.1)


def hold_memory(conn, seed, mib):
    import hashlib
    import random

    rng = random.Random(seed)
    data = bytearray()
    for _ in range(mib):
        data += rng.randbytes(1 << 20)
    digests = [hashlib.sha256(data[i << 20:(i + 1) << 20]).digest() for i in range(mib)]
    conn.send("ready")
    while True:
        step, lo, hi = conn.recv()
        i = (step * 7 + seed) % mib
        intact = hashlib.sha256(data[i << 20:(i + 1) << 20]).digest() == digests[i]
        conn.send(sum(map(square, range(lo, hi))) if intact else -1)


def run_bigmem():
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    workers = int(os.environ.get("PYJOB_WORKERS", "3"))
    mib = int(os.environ.get("PYJOB_MB", "128"))
    conns = []
    for w in range(workers):
        parent, child = ctx.Pipe()
        ctx.Process(target=hold_memory, args=(child, w, mib), daemon=True).start()
        conns.append(parent)
    for c in conns:
        c.recv()

    def step_sum(step):
        base = step * STEP
        cut = [base + STEP * w // workers for w in range(workers + 1)]
        for w, c in enumerate(conns):
            c.send((step, cut[w], cut[w + 1]))
        parts = [c.recv() for c in conns]
        return -1 if -1 in parts else sum(parts)

    run_steps(step_sum)


def run_unix():
    import socket
    import threading

    path = f"{STATE}/control.sock"
    if os.path.exists(path):
        os.unlink(path)  # a fresh start's leftover, as servers do
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(64))

    threading.Thread(target=serve, daemon=True).start()

    def step_sum(step):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(5)
            c.connect(path)
            c.sendall(str(step).encode())
            echoed = c.recv(64).decode()
        return sum(map(square, squares_of(step))) if echoed == str(step) else -1

    run_steps(step_sum)


def run_asyncio():
    import asyncio
    from asyncio.subprocess import PIPE

    async def main():
        co = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        gone = asyncio.Event()
        pidfd = os.pidfd_open(co.pid)
        asyncio.get_running_loop().add_reader(pidfd, gone.set)
        total = 0
        step = 0
        while True:
            want = sum(map(square, squares_of(step)))
            co.stdin.write(f"{want}\n".encode())
            await co.stdin.drain()
            echoed = await asyncio.wait_for(co.stdout.readline(), 5)
            p = await asyncio.create_subprocess_exec("echo", str(step), stdout=PIPE)
            printed, _ = await asyncio.wait_for(p.communicate(), 5)
            agrees = echoed == f"{want}\n".encode() and printed == f"{step}\n".encode() and not gone.is_set()
            total += want if agrees else -1
            step += 1
            report(step, total)
            await asyncio.sleep(0.1)

    asyncio.run(main())


def run_kernelfds():
    import ctypes
    import mmap
    import select
    import signal
    import threading

    libc = ctypes.CDLL(None, use_errno=True)

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    class Itimerspec(ctypes.Structure):
        _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]

    def check(ret, what):
        if ret < 0:
            sys.exit(f"{what} failed: errno {ctypes.get_errno()}")
        return ret

    # A periodic 20 ms timer on the monotonic clock, read through its timerfd.
    tfd = check(libc.timerfd_create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC), "timerfd_create")
    period = Itimerspec(Timespec(0, 20_000_000), Timespec(0, 20_000_000))
    check(libc.timerfd_settime(tfd, 0, ctypes.byref(period), None), "timerfd_settime")
    # SIGUSR1 blocked and taken from a signalfd instead of a handler.
    # And an interval timer (setitimer) whose SIGALRM a handler counts.
    alarms = [0]
    signal.signal(signal.SIGALRM, lambda *_: alarms.__setitem__(0, alarms[0] + 1))
    signal.setitimer(signal.ITIMER_REAL, 0.03, 0.03)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    mask = ctypes.create_string_buffer(128)  # sigset_t
    libc.sigemptyset(mask)
    libc.sigaddset(mask, signal.SIGUSR1)
    sfd = check(libc.signalfd(-1, mask, os.O_NONBLOCK | os.O_CLOEXEC), "signalfd")
    # A thread hands its share over through an eventfd (its counter carries the number).
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    shares = []
    go = threading.Condition()

    def helper():
        while True:
            with go:
                go.wait_for(lambda: shares)
                share = shares.pop()
            os.eventfd_write(efd, sum(square(x) for x in share) + 1)  # + 1: a sum of 0 would not wake the reader

    threading.Thread(target=helper, daemon=True).start()
    # A forked child keeps its running sum in a memfd both map shared (a memfd passed to a worker).
    mfd = os.memfd_create("running-sum", os.MFD_CLOEXEC)
    os.ftruncate(mfd, 4096)
    sums = mmap.mmap(mfd, 4096, mmap.MAP_SHARED)
    to_child, from_job = os.pipe()
    from_child, to_job = os.pipe()
    if os.fork() == 0:
        os.close(from_job)
        os.close(from_child)
        while True:
            asked = os.read(to_child, 32)
            if not asked:
                os._exit(0)  # the job is gone
            step = int(asked)
            cur = int.from_bytes(sums[0:16], "little")
            for x in range(step * STEP + STEP // 2, (step + 1) * STEP):
                cur += x * x
            sums[0:16] = cur.to_bytes(16, "little")
            os.write(to_job, b"k")
    os.close(to_child)
    os.close(to_job)
    poller = select.epoll()
    for fd in (tfd, sfd, efd):
        poller.register(fd, select.EPOLLIN)

    total = 0
    step = 0
    alarms_before = 0  # rung since the step before (its sleep included)
    while True:
        base = step * STEP
        with go:
            shares.append(range(base, base + STEP // 2))
            go.notify()
        os.write(from_job, f"{step}".encode().ljust(32))
        os.kill(os.getpid(), signal.SIGUSR1)
        got = {"timer": 0, "signal": 0, "share": None}
        deadline = time.monotonic() + 5
        while (not got["timer"] or not got["signal"] or got["share"] is None) and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.5):
                if fd == tfd:
                    got["timer"] += int.from_bytes(os.read(tfd, 8), sys.byteorder)
                elif fd == sfd:
                    info = os.read(sfd, 128)  # struct signalfd_siginfo; ssi_signo first
                    got["signal"] = int.from_bytes(info[0:4], sys.byteorder)
                elif fd == efd:
                    got["share"] = os.eventfd_read(efd) - 1
        answered = os.read(from_child, 1) == b"k"
        child_total = int.from_bytes(sums[0:16], "little")
        own_half = got["share"] if got["share"] is not None else -1
        rung = alarms[0] - alarms_before
        alarms_before += rung
        # The memfd holds the child's halves; its content read through the fd agrees with the mapping.
        agrees = (
            got["timer"] > 0
            and got["signal"] == signal.SIGUSR1
            and (rung > 0 or step == 0)  # the first step may come before the first ring
            and answered
            and os.pread(mfd, 16, 0) == sums[0:16]
        )
        total += own_half if agrees else -1
        step += 1
        report_total = total + child_total
        ok = agrees and report_total == expected(step * STEP)
        write_count(step)
        why = "" if ok else f" timer={got['timer']} signal={got['signal']} share={got['share']} answered={answered} alarms={rung} memfd={os.pread(mfd, 16, 0) == sums[0:16]} total={report_total}/{expected(step * STEP)}"
        print(f"pyjob {step} {MODE} {'ok' if ok else 'FAIL'}{why}", flush=True)
        time.sleep(0.1)


def run_sysv():
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    IPC_CREAT, IPC_PRIVATE = 0o1000, 0
    KEY = 0x41524348  # "ARCH": found again by a process that did not inherit the segment

    def check(ret, what):
        if ret is None or ret < 0:
            sys.exit(f"{what} failed: errno {ctypes.get_errno()}")
        return ret

    def retried(call, what):
        # semop and msgrcv fail with EINTR when their process is stopped and resumed (a freeze, a
        # checkpoint's seizure), as man 7 signal says: real callers (PostgreSQL's) call again, as
        # Python does for its own calls (PEP 475).
        while True:
            ret = call()
            if ret >= 0 or ctypes.get_errno() != errno.EINTR:
                return check(ret, what)

    class Sembuf(ctypes.Structure):
        _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]

    class Msg(ctypes.Structure):
        _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 64)]

    shmid = check(libc.shmget(KEY, 1 << 20, IPC_CREAT | 0o600), "shmget")
    seg = check(libc.shmat(shmid, None, 0), "shmat")
    # Two semaphores: 0 says "a step to do" to the child, 1 says "done" to the job.
    semid = check(libc.semget(IPC_PRIVATE, 2, IPC_CREAT | 0o600), "semget")
    msqid = check(libc.msgget(IPC_PRIVATE, IPC_CREAT | 0o600), "msgget")

    def sem(num, op):
        retried(lambda: libc.semop(semid, ctypes.byref(Sembuf(num, op, 0)), 1), "semop")

    def read_cell(i):  # 16-byte little-endian numbers in the segment: 0 the child's sum, 1 the step
        return int.from_bytes(ctypes.string_at(seg + 16 * i, 16), "little")

    def write_cell(i, v):
        ctypes.memmove(seg + 16 * i, v.to_bytes(16, "little"), 16)

    if os.fork() == 0:
        while True:
            sem(0, -1)
            step = read_cell(1)
            write_cell(0, read_cell(0) + sum(square(x) for x in range(step * STEP + STEP // 2, (step + 1) * STEP)))
            m = Msg(1, f"done {step}".encode())
            retried(lambda: libc.msgsnd(msqid, ctypes.byref(m), 64, 0), "msgsnd")
            sem(1, 1)

    total = 0
    step = 0
    while True:
        write_cell(1, step)
        sem(0, 1)
        total += sum(square(x) for x in range(step * STEP, step * STEP + STEP // 2))
        sem(1, -1)
        m = Msg()
        retried(lambda: libc.msgrcv(msqid, ctypes.byref(m), 64, 1, 0), "msgrcv")
        # A child that did not inherit the segment finds it by its key and reads the step from it.
        pid = os.fork()
        if pid == 0:
            found = libc.shmget(KEY, 0, 0)
            at = libc.shmat(found, None, 0) if found >= 0 else None
            seen = int.from_bytes(ctypes.string_at(at + 16, 16), "little") if at not in (None, ctypes.c_void_p(-1).value) else -1
            os._exit(0 if seen == step else 1)
        _, status = os.waitpid(pid, 0)
        keyed = os.waitstatus_to_exitcode(status) == 0
        answer = m.mtext.decode()
        step += 1
        report_total = total + read_cell(0)
        ok = answer == f"done {step - 1}" and keyed and report_total == expected(step * STEP)
        write_count(step)
        why = "" if ok else f" answer={answer!r} keyed={keyed} total={report_total}/{expected(step * STEP)}"
        print(f"pyjob {step} {MODE} {'ok' if ok else 'FAIL'}{why}", flush=True)
        time.sleep(0.1)


def run_fdpass():
    import socket

    AHEAD = 3
    job_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    answers, to_job = os.pipe()
    if os.fork() == 0:
        job_end.close()
        os.close(answers)
        while True:
            msg, fds, _, _ = socket.recv_fds(worker_end, 64, 1)
            if not msg:
                os._exit(0)  # the job is gone
            time.sleep(0.05)  # the job's next messages queue up meanwhile
            lo, hi = (int(x) for x in os.pread(fds[0], 64, 0).split())
            os.close(fds[0])
            os.write(to_job, f"{msg.decode()} {sum(square(x) for x in range(lo, hi))}".encode().ljust(64))
    worker_end.close()
    os.close(to_job)

    def send(step):
        fd = os.memfd_create(f"step-{step}", os.MFD_CLOEXEC)
        os.write(fd, f"{step * STEP} {(step + 1) * STEP}".encode())
        socket.send_fds(job_end, [str(step).encode()], [fd])
        os.close(fd)  # the descriptor lives on in the message until the worker takes it

    for ahead in range(AHEAD):
        send(ahead)
    total = 0
    step = 0
    while True:
        said, share = os.read(answers, 64).decode().split()
        total += int(share)
        send(step + AHEAD)
        step += 1
        ok = int(said) == step - 1 and total == expected(step * STEP)
        write_count(step)
        why = "" if ok else f" answer for step {said} total={total}/{expected(step * STEP)}"
        print(f"pyjob {step} {MODE} {'ok' if ok else 'FAIL'}{why}", flush=True)
        time.sleep(0.1)


def run_io_uring():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    if libc.syscall(425, 4, params) < 0:  # io_uring_setup(4 entries): the same number on every architecture
        print(f"pyjob io_uring refused: errno {ctypes.get_errno()}", flush=True)
    else:
        print("pyjob io_uring held", flush=True)
    run_steps(lambda step: sum(square(x) for x in squares_of(step)))


def run_spawnwait():
    fifo = f"/tmp/spawnwait-{os.getpid()}"

    def step_sum(step):
        if step == 10:
            os.mkfifo(fifo)
            helper = os.fork()
            if helper == 0:
                time.sleep(5)
                with open(fifo, "w"):
                    pass
                os._exit(0)
            print("pyjob spawnwait waiting", flush=True)
            child = os.posix_spawn(
                sys.executable, [sys.executable, "-c", "pass"], os.environ,
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, fifo, os.O_RDONLY, 0)],
            )
            os.waitpid(child, 0)
            os.waitpid(helper, 0)
            os.unlink(fifo)
        return sum(square(x) for x in squares_of(step))

    run_steps(step_sum)


def run_userfaultfd():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # userfaultfd(O_CLOEXEC | UFFD_USER_MODE_ONLY): the number is x86-64's (282 on arm64).
    nr = 282 if os.uname().machine == "aarch64" else 323
    if libc.syscall(nr, os.O_CLOEXEC | 1) < 0:
        sys.exit(f"userfaultfd failed: errno {ctypes.get_errno()}")
    run_steps(lambda step: sum(square(x) for x in squares_of(step)))


if __name__ == "__main__":
    with open(f"{STATE}/starts", "a") as f:
        f.write("start\n")
    print(f"pyjob start {MODE}", flush=True)
    if INPUTS:
        os.makedirs(f"{STATE}/in", exist_ok=True)
        for n in range(1, INPUTS + 1):
            with open(f"{STATE}/in/{n}", "w") as f:
                f.write(str(n))
    if MODE in ("pool", "forkserver"):
        run_pool("fork" if MODE == "pool" else "forkserver")
    elif MODE == "queue":
        run_queue()
    elif MODE == "threads":
        run_threads()
    elif MODE == "shm":
        run_shm()
    elif MODE == "inotify":
        run_inotify()
    elif MODE == "sqlite":
        run_sqlite()
    elif MODE == "mmap":
        run_mmap()
    elif MODE == "bigmem":
        run_bigmem()
    elif MODE == "clock":
        run_clock()
    elif MODE == "unix":
        run_unix()
    elif MODE == "asyncio":
        run_asyncio()
    elif MODE == "kernelfds":
        run_kernelfds()
    elif MODE == "sysv":
        run_sysv()
    elif MODE == "fdpass":
        run_fdpass()
    elif MODE == "io_uring":
        run_io_uring()
    elif MODE == "spawnwait":
        run_spawnwait()
    elif MODE == "userfaultfd":
        run_userfaultfd()
    else:
        sys.exit(f"unknown PYJOB_MODE {MODE}")
