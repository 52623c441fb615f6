package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gochat/server"
)

// scrapeGochatMetrics starts a server in-process, with -nats pointing at a
// port nobody serves so that the cluster series are registered too, and
// returns the gochat_* metric families /metrics exposes, with their help.
func scrapeGochatMetrics(t *testing.T) map[string]string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	natsAddr := ln.Addr().String()
	ln.Close()
	srv, err := server.New(server.Config{Addr: "127.0.0.1:0", NATS: "nats://" + natsAddr}, nil)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	resp, err := http.Get("http://" + srv.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if name, help, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "# HELP "), " "); ok && strings.HasPrefix(sc.Text(), "# HELP gochat_") {
			out[name] = help
		}
	}
	io.Copy(io.Discard, resp.Body)
	return out
}

// readmeMetrics returns the metric names in the rows of README's metrics
// table (lines starting "| `gochat_").
func readmeMetrics(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	row := regexp.MustCompile("(?m)^\\| `(gochat_[a-z0-9_]+)")
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	return names
}

// TestReadmeDocumentsEveryMetric compares README's metrics table with the
// series the server registers (server/metrics.go and server/cluster.go), in
// both directions, so that neither can drift.
func TestReadmeDocumentsEveryMetric(t *testing.T) {
	have := scrapeGochatMetrics(t)
	if len(have) < 20 {
		t.Fatalf("scraped only %d gochat metrics: %v", len(have), have)
	}
	doc := readmeMetrics(t)
	for name, help := range have {
		if !slices.Contains(doc, name) {
			t.Errorf("README's metrics table lacks %s (%s)", name, help)
		}
	}
	for _, name := range doc {
		if _, ok := have[name]; !ok {
			t.Errorf("README documents %s, which the server does not export", name)
		}
	}
}
