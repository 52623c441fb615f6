package main

import (
	"bytes"
	"flag"
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
