package main

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"gochat/server"
)

func TestHelpDocumentsEveryFlagWithItsEnvironmentVariable(t *testing.T) {
	var out bytes.Buffer
	if err := run([]string{"-h"}, &out); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	names := []string{"log-level", "log-format", "healthcheck"}
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	// SPEC §4's list, so that a flag dropped from RegisterFlags fails here.
	for _, want := range []string{"addr", "workers", "max-conns", "max-message", "max-content", "join-timeout",
		"ping-interval", "pong-timeout", "rate", "burst", "send-queue", "presence", "origins", "shutdown-timeout",
		"log-level", "log-format"} {
		if !strings.Contains(help, "  -"+want+" ") && !strings.Contains(help, "  -"+want+"\n") {
			t.Errorf("-h does not document -%s", want)
		}
	}
	for _, n := range names {
		if !strings.Contains(help, "-"+n) {
			t.Errorf("-h does not document -%s", n)
		}
	}
	if !strings.Contains(help, "GOCHAT_") {
		t.Error("-h does not explain the GOCHAT_* environment variables")
	}
}

func TestEnvironmentFillsUnsetFlagsAndFlagsWin(t *testing.T) {
	t.Setenv("GOCHAT_MAX_CONNS", "123")
	t.Setenv("GOCHAT_JOIN_TIMEOUT", "3s")
	t.Setenv("GOCHAT_PRESENCE", "false")
	t.Setenv("GOCHAT_RATE", "7")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	if err := fs.Parse([]string{"-rate", "2.5"}); err != nil {
		t.Fatal(err)
	}
	if err := server.ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 123 || cfg.JoinTimeout != 3*time.Second || *cfg.Presence {
		t.Fatalf("environment not applied: %+v", cfg)
	}
	if cfg.Rate != 2.5 {
		t.Fatalf("rate = %v: the flag must win over GOCHAT_RATE", cfg.Rate)
	}
}

func TestBadEnvironmentValueIsAnError(t *testing.T) {
	t.Setenv("GOCHAT_WORKERS", "many")
	if err := run([]string{"-addr", "127.0.0.1:0"}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "GOCHAT_WORKERS") {
		t.Fatalf("err = %v, want one naming GOCHAT_WORKERS", err)
	}
}

func TestDefaultsServeOn8080(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	if cfg.Addr != ":8080" {
		t.Fatalf("default addr %q", cfg.Addr)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// healthzServer serves /healthz 200 on a free loopback port and returns the port.
func healthzServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// The healthcheck probes the port the server was told to use, by flag or
// by GOCHAT_ADDR, as a compose `command: -addr :9000` needs.
func TestHealthcheckProbesTheAddrFlagAndEnv(t *testing.T) {
	port := healthzServer(t)
	t.Setenv("GOCHAT_ADDR", ":1") // must lose to the flag
	if err := run([]string{"-addr", ":" + port, "-healthcheck"}, &bytes.Buffer{}); err != nil {
		t.Fatalf("-addr :%s -healthcheck: %v", port, err)
	}
	t.Setenv("GOCHAT_ADDR", ":"+port)
	if err := run([]string{"-healthcheck"}, &bytes.Buffer{}); err != nil {
		t.Fatalf("GOCHAT_ADDR=:%s -healthcheck: %v", port, err)
	}
	if err := run([]string{"-addr", "127.0.0.1:1", "-healthcheck"}, &bytes.Buffer{}); err == nil {
		t.Fatal("healthcheck of a port nobody serves succeeded")
	}
}

// GOCHAT_HEALTHCHECK must not turn a server start into a probe.
func TestHealthcheckIsAFlagOnly(t *testing.T) {
	t.Setenv("GOCHAT_HEALTHCHECK", "true")
	o, err := parseArgs([]string{"-addr", "127.0.0.1:0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.healthcheck {
		t.Fatal("GOCHAT_HEALTHCHECK=true switched on the healthcheck")
	}
	if o, err = parseArgs([]string{"-healthcheck"}, &bytes.Buffer{}); err != nil || !o.healthcheck {
		t.Fatalf("-healthcheck: %v %+v", err, o)
	}
}

func TestMaxConnsFitsTheOpenFileLimit(t *testing.T) {
	for _, c := range []struct {
		max   int
		limit uint64
		want  int
		over  bool
	}{
		{100_000, 65_536, 65_536 - fdReserve, true},
		{100_000, 1_048_576, 100_000, false},
		{5, 20_000, 5, false},
		{20_000, 20_000, 20_000 - fdReserve, true},
		{100, 10, 1, true},
		{100_000, 0, 100_000, false}, // unknown limit
	} {
		n, _, over := fitFDLimit(c.max, c.limit)
		if over != c.over || (over && n != c.want) {
			t.Errorf("fitFDLimit(%d, %d) = %d, %v; want %d, %v", c.max, c.limit, n, over, c.want, c.over)
		}
	}
	var log bytes.Buffer
	warnFDLimit(slog.New(slog.NewTextHandler(&log, nil)), 100_000, 65_536)
	if !strings.Contains(log.String(), "open-file limit") || !strings.Contains(log.String(), "fits=65280") {
		t.Errorf("no warning for max-conns above the fd limit: %q", log.String())
	}
	log.Reset()
	warnFDLimit(slog.New(slog.NewTextHandler(&log, nil)), 5, 65_536)
	if log.Len() != 0 {
		t.Errorf("warning for max-conns that fits: %q", log.String())
	}
}

// The compose file's open-file limit must fit the default -max-conns, or
// the server would start with fewer connections than documented.
func TestComposeNofileFitsDefaultMaxConns(t *testing.T) {
	b, err := os.ReadFile("docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?s)nofile:\s*\n\s*soft:\s*(\d+)\s*\n\s*hard:\s*(\d+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("docker-compose.yml: no nofile soft/hard ulimit")
	}
	for _, v := range m[1:] {
		n, _ := strconv.Atoi(string(v))
		if n < server.DefaultMaxConns+fdReserve {
			t.Errorf("compose nofile %d < default max-conns %d + reserve %d", n, server.DefaultMaxConns, fdReserve)
		}
	}
}
