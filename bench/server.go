package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime/stime in /proc/PID/stat. It is
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// serverSample is one observation of the server process. Fields the bench
// could not observe are nil, so the report omits them instead of printing
// zeros that look like measurements.
type serverSample struct {
	RSS        *uint64
	CPU        *float64
	FDs        *int
	Goroutines *int
}

// sampler observes the server through /proc (when its pid is known and it
// runs on this machine) and/or its Prometheus /metrics endpoint.
type sampler struct {
	pid        int
	metricsURL string
	http       *http.Client
}

func newSampler(pid int, metricsURL string) *sampler {
	return &sampler{pid: pid, metricsURL: metricsURL, http: &http.Client{Timeout: 3 * time.Second}}
}

// sample prefers /proc, which is exact and costs the server nothing, and
// fills what is still unknown from /metrics. /metrics is fetched first, so
// that the server's cost of answering it (its first answer pages in code
// and builds collector state: about 600 KB of RSS) is in the opening
// sample too and not charged to what the window measures.
func (s *sampler) sample(ctx context.Context) serverSample {
	out, _ := s.sampleMetrics(ctx)
	return out
}

// sampleMetrics is sample that also returns the unlabelled /metrics
// samples it fetched (nil without -metrics).
func (s *sampler) sampleMetrics(ctx context.Context) (serverSample, map[string]float64) {
	var out serverSample
	var m map[string]float64
	if s.metricsURL != "" {
		m = s.metrics(ctx)
	}
	if s.pid > 0 {
		out.RSS = procRSS(s.pid)
		out.CPU = procCPU(s.pid)
		out.FDs = procFDs(s.pid)
	}
	if s.metricsURL != "" {
		if v, ok := m["process_resident_memory_bytes"]; ok && out.RSS == nil {
			out.RSS = ptr(uint64(v))
		}
		if v, ok := m["process_cpu_seconds_total"]; ok && out.CPU == nil {
			out.CPU = ptr(v)
		}
		if v, ok := m["process_open_fds"]; ok && out.FDs == nil {
			out.FDs = ptr(int(v))
		}
		if v, ok := m["go_goroutines"]; ok {
			out.Goroutines = ptr(int(v))
		}
	}
	return out, m
}

// metrics fetches /metrics and returns the unlabelled samples.
func (s *sampler) metrics(ctx context.Context) map[string]float64 {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metricsURL, nil)
	if err != nil {
		return nil
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	return parseMetrics(resp.Body)
}

// parseMetrics reads the Prometheus text format, keeping samples without
// labels (the process_* and go_* gauges the bench reports) and the cluster
// relay's labeled ones, keyed with their labels
// (gochat_cluster_dropped_total{reason="flood"}).
func parseMetrics(r io.Reader) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') && !strings.HasPrefix(line, "gochat_cluster_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

func procRSS(pid int) *uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if rest, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			f := bytes.Fields(rest)
			if len(f) >= 1 {
				if kb, err := strconv.ParseUint(string(f[0]), 10, 64); err == nil {
					return ptr(kb * 1024)
				}
			}
		}
	}
	return nil
}

func procCPU(pid int) *float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	// The command name may contain spaces; fields resume after its ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	f := bytes.Fields(b[i+1:])
	// After ')' field 0 is state (stat field 3): utime is 14, stime 15.
	if len(f) < 13 {
		return nil
	}
	ut, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	st, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return nil
	}
	return ptr(float64(ut+st) / clockTicks)
}

func procFDs(pid int) *int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil
	}
	return ptr(len(ents))
}

// metricsURLFor derives http://host:port/metrics from the WebSocket URL.
func metricsURLFor(wsURL string) string {
	u, err := url.Parse(wsURL)
	if err != nil {
		return ""
	}
	scheme := "http"
	if u.Scheme == "wss" {
		scheme = "https"
	}
	return scheme + "://" + u.Host + "/metrics"
}

// findListenerPID looks for the local process listening on the URL's TCP
// port, so -pid is rarely needed when the server runs on this machine. It
// returns 0 when it cannot tell (another user's process, no /proc, ...).
func findListenerPID(wsURL string) int {
	return findListenerPIDIn(wsURL, nil)
}

// findListenerPIDIn is findListenerPID among the processes whose /proc
// directory pick accepts (all when pick is nil).
func findListenerPIDIn(wsURL string, pick func(dir string) bool) int {
	return findListenerPIDs([]string{wsURL}, pick)[0]
}

// findListenerPIDs is findListenerPIDIn for several URLs in one pass over
// /proc (a bench process's thousands of sockets are read once, not once
// per server).
func findListenerPIDs(wsURLs []string, pick func(dir string) bool) []int {
	out := make([]int, len(wsURLs))
	ports := map[int][]int{} // port -> indexes in wsURLs
	for i, raw := range wsURLs {
		u, err := url.Parse(raw)
		if err != nil {
			continue
		}
		if p, err := strconv.Atoi(cmp.Or(u.Port(), "80")); err == nil {
			ports[p] = append(ports[p], i)
		}
	}
	inodes := map[string]int{} // "socket:[inode]" -> port
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		for line := range bytes.SplitSeq(b, []byte("\n")) {
			f := strings.Fields(string(line))
			// local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is field 9.
			if len(f) < 10 || f[3] != "0A" {
				continue
			}
			_, hp, ok := strings.Cut(f[1], ":")
			if v, err := strconv.ParseUint(hp, 16, 16); ok && err == nil && ports[int(v)] != nil {
				inodes["socket:["+f[9]+"]"] = int(v)
			}
		}
	}
	if len(inodes) == 0 {
		return out
	}
	left := len(ports)
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := os.Getpid()
	for _, dir := range procs {
		pid, _ := strconv.Atoi(filepath.Base(dir))
		if pid == self || (pick != nil && !pick(dir)) {
			continue
		}
		fds, err := os.ReadDir(dir + "/fd")
		if err != nil {
			continue
		}
		for _, fd := range fds {
			target, err := os.Readlink(dir + "/fd/" + fd.Name())
			p, ok := inodes[target]
			if err != nil || !ok || out[ports[p][0]] != 0 {
				continue
			}
			for _, i := range ports[p] {
				out[i] = pid
			}
			if left--; left == 0 {
				return out
			}
		}
	}
	return out
}

// isLoopbackHost reports whether host (from a URL) is a loopback address.
// The bench refuses other targets unless -allow-remote is given, because a
// load test aimed at the wrong host is an attack.
func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func ptr[T any](v T) *T { return &v }
