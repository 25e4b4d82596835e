// A batch job as Go users write them, for ARCH's workload tests: the Go twin
// of python-job.py, built static (CGO_ENABLED=0) into a busybox image
// (GO_IMAGE in images.ts).
//
// Its progress lives in memory (a running sum it checks against a closed
// form), and it prints one line per step: "gojob <step> go ok" or
// "gojob <step> go FAIL <what failed>". It appends "start" to
// $GOJOB_STATE/starts (default /state) when it starts, so a restored job
// (which does not start again) is told from a fresh one. Each step leans on
// what the Go runtime does by itself: goroutines on several threads
// (preempted by signals), channels, the network poller (epoll) with a
// loopback TCP server in the job, a time.Ticker, os/signal, a child process
// (fork and exec, waited for through the runtime), and the monotonic clock,
// watched as a stall watchdog does.
//
// Written for the oldest Go the installer may find (Debian 12's 1.19).
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

const step = 16
const workers = 4

type share struct{ from, to int64 }

func sumOfSquares(s share) int64 {
	var t int64
	for x := s.from; x < s.to; x++ {
		t += x * x
	}
	return t
}

// expected is the sum of squares 0..n-1.
func expected(n int64) int64 { return (n - 1) * n * (2*n - 1) / 6 }

func main() {
	state := os.Getenv("GOJOB_STATE")
	if state == "" {
		state = "/state"
	}
	if err := os.MkdirAll(state, 0o755); err != nil {
		fail(err)
	}
	f, err := os.OpenFile(state+"/starts", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		fail(err)
	}
	f.WriteString("start\n")
	f.Close()
	fmt.Println("gojob start go")

	// A pool of goroutines summing shares.
	jobs := make(chan share)
	results := make(chan int64)
	for i := 0; i < workers; i++ {
		go func() {
			for s := range jobs {
				results <- sumOfSquares(s)
			}
		}()
	}
	// An echo server on loopback, in the job's own network namespace.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				fail(err)
			}
			go func(c net.Conn) {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				c.Write([]byte(line))
			}(c)
		}
	}()
	// A heartbeat and a signal handler.
	var beats, signals int64
	ticker := time.NewTicker(20 * time.Millisecond)
	go func() {
		for range ticker.C {
			atomic.AddInt64(&beats, 1)
		}
	}()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			atomic.AddInt64(&signals, 1)
		}
	}()

	var total int64
	last := time.Now()
	lastBeats := atomic.LoadInt64(&beats)
	for n := int64(1); ; n++ {
		var failed []string
		if gap := time.Since(last); gap >= 3*time.Second {
			failed = append(failed, fmt.Sprintf("monotonic gap %.1f s", gap.Seconds()))
		}
		last = time.Now()
		from := (n - 1) * step
		go func() {
			for i := int64(0); i < workers; i++ {
				jobs <- share{from + step*i/workers, from + step*(i+1)/workers}
			}
		}()
		for i := 0; i < workers; i++ {
			total += <-results
		}
		if total != expected(n*step) {
			failed = append(failed, fmt.Sprintf("sum %d is not %d", total, expected(n*step)))
		}
		if said, err := echo(ln.Addr().String(), n); err != nil || said != fmt.Sprint(n) {
			failed = append(failed, fmt.Sprintf("echo server said %q (%v)", said, err))
		}
		if out, err := exec.Command("/bin/sh", "-c", fmt.Sprintf("echo step %d", n)).Output(); err != nil ||
			strings.TrimSpace(string(out)) != fmt.Sprintf("step %d", n) {
			failed = append(failed, fmt.Sprintf("child said %q (%v)", out, err))
		}
		before := atomic.LoadInt64(&signals)
		syscall.Kill(os.Getpid(), syscall.SIGUSR1)
		for i := 0; i < 100 && atomic.LoadInt64(&signals) == before; i++ {
			time.Sleep(10 * time.Millisecond)
		}
		if atomic.LoadInt64(&signals) == before {
			failed = append(failed, "SIGUSR1 not delivered")
		}
		if b := atomic.LoadInt64(&beats); b == lastBeats && n > 1 {
			failed = append(failed, "heartbeat stopped")
		} else {
			lastBeats = b
		}
		if len(failed) > 0 {
			fmt.Printf("gojob %d go FAIL %s\n", n, strings.Join(failed, "; "))
		} else {
			fmt.Printf("gojob %d go ok\n", n)
		}
		os.WriteFile(state+"/count.tmp", []byte(fmt.Sprintf("%d\n", n)), 0o644)
		os.Rename(state+"/count.tmp", state+"/count")
		time.Sleep(200 * time.Millisecond)
	}
}

// echo sends n to the job's own server and returns what came back.
func echo(addr string, n int64) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "%d\n", n); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func fail(err error) {
	fmt.Println("gojob error:", err)
	os.Exit(1)
}
