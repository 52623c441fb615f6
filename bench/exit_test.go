package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// A run that could not connect every client did not measure what it
// reports: every mode must return an error with the count and the cause.
func TestEveryModeFailsWhenClientsAreRefused(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"idle", "broadcast", "storm", "slow", "soak"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ts := startTestServer(t, &testServer{presence: mode == "storm", victim: -1, maxConns: 5})
			cfg := testConfig(ts, 10)
			cfg.Slow = 2
			cfg.Sample = 200 * time.Millisecond
			cfg.Drain = 300 * time.Millisecond
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			res, err := runScenario(ctx, scenarios[mode], cfg)
			if err == nil {
				t.Fatalf("no error; connected %d of %d", res.Connected, res.Conns)
			}
			if !strings.Contains(err.Error(), "5 of 10 clients could not connect") || !strings.Contains(err.Error(), "503") {
				t.Fatalf("err = %v; want the count and the 503", err)
			}
		})
	}
}

// closedURL is a loopback URL nothing listens on.
func closedURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "ws://" + addr + "/ws"
}

func TestNoServerIsAnErrorWithTheCause(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"storm", "idle", "broadcast"} {
		t.Run(mode, func(t *testing.T) {
			ts := startTestServer(t, &testServer{victim: -1})
			cfg := testConfig(ts, 4)
			cfg.URL = closedURL(t)
			res, err := runScenario(context.Background(), scenarios[mode], cfg)
			if err == nil {
				t.Fatalf("no error; result %+v", res)
			}
			msg := err.Error()
			if !strings.Contains(msg, "4 of 4 clients could not connect") || !strings.Contains(msg, "connection refused") {
				t.Fatalf("err = %v; want the count and the cause", err)
			}
			if mode != "storm" && !strings.Contains(msg, "no client connected: ") {
				t.Fatalf("err = %v; want no client connected with its cause", err)
			}
		})
	}
}

func TestFullConnectIsNoError(t *testing.T) {
	t.Parallel()
	ts := startTestServer(t, &testServer{victim: -1, maxConns: 10})
	if _, err := runScenario(context.Background(), scenarios["idle"], testConfig(ts, 10)); err != nil {
		t.Fatal(err)
	}
}
