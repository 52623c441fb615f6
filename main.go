// Command gochat serves the gochat WebSocket chat: `./gochat` alone serves
// ws://HOST:8080/ws, the chat page, /healthz, /readyz and /metrics.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"gochat/server"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// options is everything the command line and the environment decide.
type options struct {
	cfg         server.Config
	logLevel    string
	logFormat   string
	healthcheck bool
}

// parseArgs parses flags, then fills unset ones from GOCHAT_* variables.
// Every value is checked as it is set, so a bad one is an error naming its
// flag or variable; nothing is silently replaced. It returns nil, nil for -h.
func parseArgs(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	// The usage goes to stderr for -h only; after a bad value it would bury
	// the one line that matters, which the caller prints.
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	o := &options{logLevel: "info", logFormat: "text"}
	o.cfg.RegisterFlags(fs)
	fs.Var(choice{&o.logLevel, []string{"debug", "info", "warn", "error"}}, "log-level", "log `level`: debug, info, warn or error")
	fs.Var(choice{&o.logFormat, []string{"text", "json"}}, "log-format", "log `format`: text or json")
	fs.BoolVar(&o.healthcheck, "healthcheck", false, "probe /healthz on the port of -addr/GOCHAT_ADDR and exit 0 if healthy, 1 if not (for container healthchecks; a flag only, never read from GOCHAT_HEALTHCHECK)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: gochat [flags]\n\nEvery flag except -healthcheck can also be set with the environment variable GOCHAT_<FLAG> (e.g. GOCHAT_MAX_CONNS); flags win.\nA value out of range is an error (exit 1), never replaced by the default; each flag says what 0 means.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			stderr.Write(usage.Bytes())
			return nil, nil
		}
		return nil, fmt.Errorf("gochat: %w (see gochat -h)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("gochat: unexpected argument %q: gochat takes flags only, e.g. -addr :9000 (see -h)", fs.Arg(0))
	}
	if err := server.ApplyEnv(fs, "healthcheck"); err != nil {
		return nil, err
	}
	return o, nil
}

// run parses the configuration, then either probes a running server
// (-healthcheck) or serves until SIGINT/SIGTERM and shuts down gracefully.
// A second signal exits at once.
func run(args []string, stderr io.Writer) error {
	o, err := parseArgs(args, stderr)
	if o == nil || err != nil {
		return err
	}
	cfg := o.cfg
	if o.healthcheck {
		return probe(cfg.Addr)
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	warnFDLimit(log, cfg.MaxConns, nofileLimit())

	srv, err := server.New(cfg, log)
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	served := make(chan error, 1)
	go func() { served <- srv.Serve() }()

	select {
	case err := <-served:
		return err
	case sig := <-sigs:
		log.Info("signal received; draining", "signal", sig.String())
	}
	go func() {
		<-sigs
		log.Warn("second signal; exiting now")
		os.Exit(1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), srv.Config().ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("shutdown timeout reached; remaining connections dropped", "err", err)
	}
	log.Info("stopped")
	return nil
}

// fdReserve is the file descriptors kept for everything but WebSocket
// connections: stdio, the listener, epoll, NATS, HTTP requests to /metrics,
// /healthz and the page, and upgrades in flight.
const fdReserve = 256

// fitFDLimit reports whether maxConns is above what the open-file limit
// allows (limit minus fdReserve) and what would fit. Past the limit accept
// fails with EMFILE; the server answers such clients 503 from a reserved
// fd and backs off, so it degrades like -max-conns, only at a lower count,
// which is why gochat warns at start rather than change the setting.
// limit 0 means unknown.
func fitFDLimit(maxConns int, limit uint64) (fit int, lim uint64, over bool) {
	if limit == 0 || limit > uint64(math.MaxInt) {
		return maxConns, limit, false
	}
	fit = max(int(limit)-fdReserve, 1)
	if maxConns <= fit {
		return maxConns, limit, false
	}
	return fit, limit, true
}

// warnFDLimit logs a warning when maxConns does not fit the open-file limit.
func warnFDLimit(log *slog.Logger, maxConns int, limit uint64) {
	if fit, limit, over := fitFDLimit(maxConns, limit); over {
		log.Warn("max-conns is above what the open-file limit allows (one fd per connection, plus a reserve): "+
			"once fds run out, new clients get 503 instead; raise `ulimit -n` (nofile) or lower -max-conns",
			"max_conns", maxConns, "nofile", limit, "fits", fit)
	}
}

// nofileLimit is this process's soft RLIMIT_NOFILE (the Go runtime has
// already raised it to the hard limit), or 0 if unknown.
func nofileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == math.MaxUint64 {
		return 0
	}
	return lim.Cur
}

// choice is a string flag restricted to a few values (case-insensitive).
type choice struct {
	p   *string
	any []string
}

func (c choice) String() string {
	if c.p == nil {
		return ""
	}
	return *c.p
}

func (c choice) Set(s string) error {
	for _, v := range c.any {
		if strings.EqualFold(s, v) {
			*c.p = v
			return nil
		}
	}
	return fmt.Errorf("want %s", strings.Join(c.any, ", "))
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("gochat: -log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("gochat: -log-format %q: want text or json", format)
}

// probe GETs /healthz on the local server: the container healthcheck,
// since a scratch image has no curl. addr is the server's own -addr after
// flags and GOCHAT_ADDR are applied, so `gochat -addr :9000 -healthcheck`
// probes port 9000; an empty or wildcard host probes 127.0.0.1.
func probe(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("gochat: -addr %q: %w", addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + "/healthz")
	if err != nil {
		return fmt.Errorf("gochat: healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("gochat: healthcheck: %s", resp.Status)
	}
	return nil
}
