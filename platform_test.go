package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestNonLinuxBuildSaysLinux: gochat needs epoll. Building for macOS must
// fail with a message naming Linux (server/platform_other.go), not with
// "undefined: netpoll.Epoll".
func TestNonLinuxBuildSaysLinux(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the standard library for darwin on first run")
	}
	cmd := exec.Command("go", "build", "./server/")
	cmd.Env = append(os.Environ(), "GOOS=darwin", "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatal("GOOS=darwin go build ./server/ succeeded; gochat's reactor is epoll, Linux only")
	}
	if !strings.Contains(strings.ToLower(string(out)), "linux") {
		t.Fatalf("GOOS=darwin build error does not name Linux:\n%s", out)
	}
	if strings.Contains(string(out), "netpoll.Epoll") {
		t.Errorf("GOOS=darwin build error still leads with netpoll.Epoll:\n%s", out)
	}
}
