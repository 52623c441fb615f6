package main

import (
	"crypto/sha256"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func needPerfTools(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the server and the harness")
	}
	for _, tool := range []string{"bash", "python3", "curl", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("perf.sh needs %s", tool)
		}
	}
}

// resultsDigest hashes the tracked bench/results, which perf.sh must leave
// alone unless asked.
func resultsDigest(t *testing.T) string {
	h := sha256.New()
	files, _ := filepath.Glob("results/*.json")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(f))
		h.Write(b)
	}
	return string(h.Sum(nil))
}

// TestPerfScriptUsesItsOwnServerAndOutput runs perf.sh's seconds-long
// smoke group: its own server on a free port, results in PERF_OUT, the
// tracked results untouched, and no temporary files left behind.
func TestPerfScriptUsesItsOwnServerAndOutput(t *testing.T) {
	needPerfTools(t)
	before := resultsDigest(t)
	out := t.TempDir()
	tmp := t.TempDir()
	cmd := exec.Command("bash", "perf.sh", "smoke")
	cmd.Env = append(os.Environ(), "PERF_OUT="+out, "TMPDIR="+tmp, "PERF_WRITE_RESULTS=")
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("perf.sh smoke: %v\n%s", err, b)
	}
	var res Result
	data, err := os.ReadFile(filepath.Join(out, "smoke-idle-50.json"))
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	if err := json.Unmarshal(data, &res); err != nil || res.Connected != 50 {
		t.Fatalf("result %s: %v", data, err)
	}
	if resultsDigest(t) != before {
		t.Fatal("perf.sh changed the tracked bench/results without -w")
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Fatalf("perf.sh left %d temporary entries behind", len(left))
	}
}

// TestPerfScriptRefusesABusyPort: a server someone else runs must never be
// benchmarked in place of perf.sh's own.
func TestPerfScriptRefusesABusyPort(t *testing.T) {
	needPerfTools(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	out := t.TempDir()
	cmd := exec.Command("bash", "perf.sh", "smoke")
	cmd.Env = append(os.Environ(), "PERF_OUT="+out, "PERF_PORT="+port, "TMPDIR="+t.TempDir())
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "already answers") {
		t.Fatalf("perf.sh against a busy port: err %v\n%s", err, b)
	}
	if files, _ := os.ReadDir(out); len(files) != 0 {
		t.Fatalf("perf.sh wrote %d files for a busy port", len(files))
	}
}
