// Command gochat serves the gochat WebSocket chat: `./gochat` alone serves
// ws://HOST:8080/ws, the chat page, /healthz, /readyz and /metrics.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
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

// run parses flags (GOCHAT_* environment variables fill in unset ones),
// serves until SIGINT/SIGTERM, then shuts down gracefully. A second signal
// exits at once.
func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	healthcheck := fs.Bool("healthcheck", false, "probe /healthz on -addr and exit 0 if healthy (for container healthchecks)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: gochat [flags]\n\nEvery flag can also be set with the environment variable GOCHAT_<FLAG> (e.g. GOCHAT_MAX_CONNS); flags win.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if err := server.ApplyEnv(fs); err != nil {
		return err
	}
	if *healthcheck {
		return probe(cfg.Addr)
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}

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
// since a scratch image has no curl.
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
