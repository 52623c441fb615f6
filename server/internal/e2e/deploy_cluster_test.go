package e2e

// The `cluster` profile of docker-compose.yml: NATS with JetStream, three
// gochat nodes and HAProxy on 8080. Loaded with compose-go as the default
// project is (deploy_test.go); the HAProxy configuration is checked by
// haproxy itself when it is installed, and run in front of three
// in-process nodes.

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	natsserver "github.com/nats-io/nats-server/v2/server"

	"gochat/server"
)

var clusterNodes = []string{"gochat-1", "gochat-2", "gochat-3"}

const (
	clusterLB        = "lb"
	clusterNATS      = "nats"
	clusterLBConfig  = "haproxy"
	haproxyCfgTarget = "/usr/local/etc/haproxy/haproxy.cfg"
	pingInterval     = server.DefaultPingInterval
)

// loadComposeProject loads docker-compose.yml with the given profiles
// enabled, validated against the Compose schema.
func loadComposeProject(t *testing.T, profiles ...string) *types.Project {
	t.Helper()
	project, err := loader.LoadWithContext(context.Background(), composeDetails(t), func(o *loader.Options) {
		o.SetProjectName("gochat", true)
		o.Profiles = profiles
	})
	if err != nil {
		t.Fatalf("docker-compose.yml (profiles %v) does not load: %v", profiles, err)
	}
	return project
}

func clusterService(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	svc, ok := p.Services[name]
	if !ok {
		t.Fatalf("profile cluster has no service %s (has %v)", name, p.ServiceNames())
	}
	if !slices.Contains(svc.Profiles, "cluster") {
		t.Errorf("service %s is not in profile cluster (profiles %v)", name, svc.Profiles)
	}
	return svc
}

// `docker compose up` without a profile is the single node, as before.
func TestComposeDefaultProjectIsOneNode(t *testing.T) {
	p := loadComposeProject(t)
	if names := p.ServiceNames(); !slices.Equal(names, []string{"gochat"}) {
		t.Errorf("default services %v, want [gochat] alone", names)
	}
	if svc := p.Services["gochat"]; svc.Environment["GOCHAT_NATS"] != nil {
		t.Error("the single node has GOCHAT_NATS")
	}
	for _, name := range append([]string{clusterNATS, clusterLB}, clusterNodes...) {
		if _, ok := p.DisabledServices[name]; !ok {
			t.Errorf("%s is not a service disabled outside profile cluster", name)
		}
	}
}

func TestComposeClusterRunsNATSWithJetStream(t *testing.T) {
	p := loadComposeProject(t, "cluster")
	svc := clusterService(t, p, clusterNATS)
	if !strings.HasPrefix(svc.Image, "nats:2.15") {
		t.Errorf("nats image %q, want the official nats:2.15", svc.Image)
	}
	cmd := []string(svc.Command)
	if !slices.Contains(cmd, "-js") && !slices.Contains(cmd, "--jetstream") {
		t.Errorf("nats command %q does not enable JetStream (-js)", cmd)
	}
	store := argAfter(cmd, "-sd", "--store_dir")
	if store == "" {
		t.Fatalf("nats command %q has no JetStream store directory (-sd)", cmd)
	}
	var stored bool
	for _, v := range svc.Volumes {
		if v.Type == types.VolumeTypeVolume && v.Target == store {
			if _, ok := p.Volumes[v.Source]; !ok {
				t.Errorf("volume %s is not a named volume of the project", v.Source)
			}
			stored = true
		}
	}
	if !stored {
		t.Errorf("the JetStream store %s is not on a named volume (volumes %+v)", store, svc.Volumes)
	}
	monitor := argAfter(cmd, "-m", "--http_port")
	hc := svc.HealthCheck
	if hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] != "CMD" {
		t.Fatalf("nats has no exec-form healthcheck: %+v", hc)
	}
	if probe := strings.Join(hc.Test, " "); monitor == "" || !strings.Contains(probe, ":"+monitor+"/healthz") || !strings.Contains(probe, "js-enabled-only=true") {
		t.Errorf("nats healthcheck %q does not ask the monitoring port (-m %s) whether JetStream is up", probe, monitor)
	}
	if len(svc.Ports) != 0 {
		t.Errorf("nats publishes ports %+v: it should be reachable by the nodes only", svc.Ports)
	}
}

// argAfter is the argument after any of names in cmd.
func argAfter(cmd []string, names ...string) string {
	for i, a := range cmd[:max(len(cmd)-1, 0)] {
		if slices.Contains(names, a) {
			return cmd[i+1]
		}
	}
	return ""
}

// Each node is the single service (image, healthcheck, drain, limits,
// hardening, environment) plus GOCHAT_NATS, with no port of its own.
func TestComposeClusterNodesAreTheGochatServiceOnNATS(t *testing.T) {
	p := loadComposeProject(t, "cluster")
	single := p.Services["gochat"]
	nats := clusterService(t, p, clusterNATS)
	for _, name := range clusterNodes {
		svc := clusterService(t, p, name)
		if svc.Image != single.Image || svc.Build == nil || single.Build == nil || svc.Build.Context != single.Build.Context {
			t.Errorf("%s: image %q build %+v, want gochat's (%q, %+v)", name, svc.Image, svc.Build, single.Image, single.Build)
		}
		if len(svc.Ports) != 0 {
			t.Errorf("%s publishes %+v: only the load balancer publishes 8080", name, svc.Ports)
		}
		env := map[string]string{}
		for k, v := range svc.Environment {
			if v != nil {
				env[k] = *v
			}
		}
		u, err := url.Parse(env["GOCHAT_NATS"])
		if err != nil || u.Scheme != "nats" || u.Hostname() != clusterNATS || u.Port() != "4222" {
			t.Errorf("%s: GOCHAT_NATS=%q, want nats://%s:4222", name, env["GOCHAT_NATS"], clusterNATS)
		}
		delete(env, "GOCHAT_NATS")
		for k, v := range single.Environment {
			if v == nil || env[k] != *v {
				t.Errorf("%s: %s differs from the gochat service's", name, k)
			}
			delete(env, k)
		}
		if len(env) != 0 {
			t.Errorf("%s: extra environment %v", name, env)
		}
		if dep, ok := svc.DependsOn[clusterNATS]; !ok || dep.Condition != types.ServiceConditionHealthy {
			t.Errorf("%s does not wait for a healthy nats (depends_on %+v)", name, svc.DependsOn)
		}
		if nats.HealthCheck == nil {
			t.Errorf("%s waits for nats to be healthy, which has no healthcheck", name)
		}
		same := func(what string, a, b any) {
			if !reflect.DeepEqual(a, b) {
				t.Errorf("%s: %s %v, gochat has %v", name, what, a, b)
			}
		}
		same("healthcheck", deref(svc.HealthCheck), deref(single.HealthCheck))
		same("restart", svc.Restart, single.Restart)
		same("stop_signal", svc.StopSignal, single.StopSignal)
		same("stop_grace_period", deref(svc.StopGracePeriod), deref(single.StopGracePeriod))
		same("ulimits", deref(svc.Ulimits["nofile"]), deref(single.Ulimits["nofile"]))
		same("read_only", svc.ReadOnly, single.ReadOnly)
		same("cap_drop", svc.CapDrop, single.CapDrop)
		same("security_opt", svc.SecurityOpt, single.SecurityOpt)
	}
}

func deref[T any](p *T) any {
	if p == nil {
		return nil
	}
	return *p
}

// The nodes' environment is a configuration gochat itself accepts.
func TestComposeClusterNodeEnvironmentIsAccepted(t *testing.T) {
	p := loadComposeProject(t, "cluster")
	for k, v := range clusterService(t, p, clusterNodes[0]).Environment {
		if v != nil {
			t.Setenv(k, *v)
		}
	}
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	fs.String("log-level", "", "")
	fs.String("log-format", "", "")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := server.ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Defaults().Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.NATS == "" {
		t.Error("the node's environment does not set -nats")
	}
}

// The load balancer alone publishes 8080, after the nodes are healthy;
// `docker compose --profile cluster up lb` (README) starts it with what it
// depends on, which must not include the single gochat (it publishes 8080
// too).
func TestComposeClusterLoadBalancerPublishes8080(t *testing.T) {
	p := loadComposeProject(t, "cluster")
	lb := clusterService(t, p, clusterLB)
	var published bool
	for _, port := range lb.Ports {
		published = published || (port.Published == strconv.Itoa(deployPort) && port.Target == deployPort)
	}
	if !published {
		t.Errorf("lb does not publish %d:%d (ports %+v)", deployPort, deployPort, lb.Ports)
	}
	if !strings.HasPrefix(lb.Image, "haproxy:3") {
		t.Errorf("lb image %q, want haproxy:3.x", lb.Image)
	}
	for _, name := range clusterNodes {
		if dep, ok := lb.DependsOn[name]; !ok || dep.Condition != types.ServiceConditionHealthy {
			t.Errorf("lb does not wait for a healthy %s (depends_on %+v)", name, lb.DependsOn)
		}
	}
	// What `up lb` starts: lb and its dependencies, transitively.
	started := map[string]bool{}
	var visit func(string)
	visit = func(name string) {
		if started[name] {
			return
		}
		started[name] = true
		for dep := range p.Services[name].DependsOn {
			visit(dep)
		}
	}
	visit(clusterLB)
	if started["gochat"] {
		t.Error("lb depends on the single gochat: `up lb` would publish 8080 twice")
	}
	for name := range started {
		if name != clusterLB && len(p.Services[name].Ports) != 0 {
			t.Errorf("%s, started with lb, publishes %+v", name, p.Services[name].Ports)
		}
	}
	if len(started) != 2+len(clusterNodes) {
		t.Errorf("`up lb` starts %v, want lb, nats and the three nodes", started)
	}
	var mounted bool
	for _, c := range lb.Configs {
		mounted = mounted || (c.Source == clusterLBConfig && c.Target == haproxyCfgTarget)
	}
	if !mounted {
		t.Errorf("lb does not mount config %s at %s (configs %+v)", clusterLBConfig, haproxyCfgTarget, lb.Configs)
	}
}

// haproxyConfig is the inline HAProxy configuration of the profile.
func haproxyConfig(t *testing.T) string {
	t.Helper()
	p := loadComposeProject(t, "cluster")
	c, ok := p.Configs[clusterLBConfig]
	if !ok || strings.TrimSpace(c.Content) == "" {
		t.Fatalf("no inline config %s (configs %v)", clusterLBConfig, p.Configs)
	}
	return c.Content
}

// haproxyDirective returns the arguments of each line of text starting
// with directive (after indentation).
func haproxyDirective(text, directive string) [][]string {
	var out [][]string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		n := len(strings.Fields(directive))
		if len(f) >= n && strings.Join(f[:n], " ") == directive {
			out = append(out, f[n:])
		}
	}
	return out
}

func TestComposeClusterHAProxyConfig(t *testing.T) {
	cfg := haproxyConfig(t)
	if got := haproxyDirective(cfg, "balance"); len(got) != 1 || !slices.Equal(got[0], []string{"roundrobin"}) {
		t.Errorf("balance %v, want roundrobin", got)
	}
	if got := haproxyDirective(cfg, "bind"); len(got) != 1 || got[0][0] != ":"+strconv.Itoa(deployPort) {
		t.Errorf("bind %v, want :%d (the port lb publishes)", got, deployPort)
	}
	if got := haproxyDirective(cfg, "mode"); len(got) != 1 || got[0][0] != "http" {
		t.Errorf("mode %v, want http (WebSocket upgrades, then a tunnel)", got)
	}
	var servers []string
	for _, s := range haproxyDirective(cfg, "server") {
		if len(s) < 2 {
			t.Fatalf("server line %v", s)
		}
		servers = append(servers, s[1])
	}
	var want []string
	for _, n := range clusterNodes {
		want = append(want, n+":"+strconv.Itoa(deployPort))
	}
	if !slices.Equal(servers, want) {
		t.Errorf("backend servers %v, want %v", servers, want)
	}
	if ds := haproxyDirective(cfg, "default-server"); len(ds) != 1 || !slices.Contains(ds[0], "check") {
		t.Errorf("default-server %v does not health-check the nodes", ds)
	}
	if got := haproxyDirective(cfg, "http-check send"); len(got) != 1 || !regexp.MustCompile(`uri /(readyz|healthz)\b`).MatchString(strings.Join(got[0], " ")) {
		t.Errorf("http-check send %v, want a GET of /readyz or /healthz", got)
	}
	timeout := func(name string) time.Duration {
		got := haproxyDirective(cfg, "timeout "+name)
		if len(got) != 1 {
			t.Fatalf("timeout %s: %v, want one", name, got)
		}
		d, err := time.ParseDuration(got[0][0])
		if err != nil {
			t.Fatalf("timeout %s %s: %v", name, got[0][0], err)
		}
		return d
	}
	if d := timeout("tunnel"); d < time.Hour {
		t.Errorf("timeout tunnel %v: a quiet WebSocket would be cut before an hour", d)
	}
	for _, name := range []string{"client", "server"} {
		if d := timeout(name); d <= pingInterval {
			t.Errorf("timeout %s %v is not longer than gochat's ping interval %v", name, d, pingInterval)
		}
	}
	if strings.Contains(cfg, "$") {
		t.Error("the config has a $, which compose would interpolate")
	}
}

// needHAProxy returns the haproxy binary, or skips (fails in CI).
func needHAProxy(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("haproxy")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but haproxy is missing (apt-get install -y haproxy): %v", err)
		}
		t.Skip("haproxy not installed; skipping (apt-get install -y haproxy)")
	}
	return path
}

// haproxy -c accepts the config as it is in compose; the only warnings
// allowed are the node names, which resolve inside Docker only.
func TestComposeClusterHAProxyConfigIsValid(t *testing.T) {
	bin := needHAProxy(t)
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(haproxyConfig(t)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput()
	if err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "[WARNING]") && !strings.Contains(line, "could not resolve address") {
			t.Errorf("haproxy -c: %s", line)
		}
	}
}

// The profile's HAProxy, configured by the same text with the node names
// and the port rewritten to loopback addresses, in front of three nodes
// sharing an embedded NATS: three clients through the load balancer land
// on the three nodes, and chat reaches them all.
func TestClusterBehindHAProxy(t *testing.T) {
	checkLeaks(t)
	bin := needHAProxy(t)
	cfg := haproxyConfig(t)

	ns := startNATSWith(t, &natsserver.Options{JetStream: true, StoreDir: t.TempDir()})
	nodes := make([]*node, len(clusterNodes))
	for i, name := range clusterNodes {
		nodes[i], _ = startNode(t, ns, server.Config{})
		from := " " + name + ":" + strconv.Itoa(deployPort)
		if !strings.Contains(cfg, from) {
			t.Fatalf("config has no server %s", from)
		}
		cfg = strings.ReplaceAll(cfg, from, " "+nodes[i].Addr().String())
	}
	lbAddr := freeLoopbackAddr(t)
	bind := "bind :" + strconv.Itoa(deployPort)
	if !strings.Contains(cfg, bind) {
		t.Fatalf("config has no %q", bind)
	}
	cfg = strings.Replace(cfg, bind, "bind "+lbAddr, 1)
	// The container's open-file limit is compose's (ulimits); here the
	// limit is the test machine's, which may not cover the maxconn.
	cfg = regexp.MustCompile(`(?m)^(\s*maxconn) \d+$`).ReplaceAllString(cfg, "$1 1000")
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}

	var out lockedBuffer
	cmd := exec.Command(bin, "-db", "-f", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("haproxy output:\n%s\nconfig:\n%s", &out, cfg)
		}
	})
	eventually(t, clusterWait, "haproxy listening on "+lbAddr, func() bool {
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("haproxy exited: %v\n%s", err, &out)
		default:
		}
		c, err := net.Dial("tcp", lbAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	lb := "ws://" + lbAddr + "/ws"
	names := []string{"alice", "bob", "carol"}
	clients := make([]*chatClient, len(names))
	for i, name := range names {
		clients[i] = joinChat(t, lb, name)
	}
	for i, n := range nodes {
		eventually(t, clusterWait, fmt.Sprintf("one member on %s", clusterNodes[i]), func() bool {
			return metric(t, n.base, "gochat_members") == 1
		})
	}
	// Everyone sees everyone join, then every message, whichever node
	// each is on.
	for i, c := range clients {
		for _, other := range names[i+1:] {
			c.waitFor(chatMsg{"System", other + " joined the chat"})
		}
	}
	for i, from := range clients {
		text := "hello from " + names[i] + " through haproxy"
		from.send(fmt.Sprintf(`{"content":%q}`, text))
		for _, to := range clients {
			to.waitFor(chatMsg{names[i], text})
		}
	}
	// Health checks of /readyz pass on every node (log-health-checks).
	for _, name := range clusterNodes {
		eventually(t, clusterWait, "haproxy's health check of "+name+" passed", func() bool {
			return strings.Contains(out.String(), "Health check for server gochat/"+name+" succeeded")
		})
	}
	if strings.Contains(out.String(), " is DOWN") {
		t.Errorf("haproxy marked a node down:\n%s", &out)
	}
}
