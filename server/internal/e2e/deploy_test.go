package e2e

// Deployment checks: the Dockerfile, .dockerignore and docker-compose.yml are
// parsed with the same libraries that Docker uses (BuildKit's Dockerfile
// parser and shell lexer, compose-go's loader and schema, moby's
// patternmatcher), so these tests need no Docker engine. The files are read
// at the repository root (repoRoot), wherever the tests run from.

import (
	"context"
	"go/version"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

const (
	deployBinary          = "/gochat"
	deployPort            = 8080
	deployShutdownTimeout = 5 * time.Second // the server's default -shutdown-timeout
)

// ---- Dockerfile -------------------------------------------------------------

type dockerStage struct {
	from  *parser.Node // the FROM instruction
	image string
	name  string
	insts []*parser.Node // instructions after FROM
}

func parseDockerfile(t *testing.T) []dockerStage {
	t.Helper()
	f, err := os.Open(repoFile(t, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile does not parse: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile parser warning: %s", w.Short)
	}
	var stages []dockerStage
	for _, n := range res.AST.Children {
		if strings.EqualFold(n.Value, "from") {
			args := nodeArgs(n)
			st := dockerStage{from: n}
			if len(args) > 0 {
				st.image = args[0]
			}
			if len(args) == 3 && strings.EqualFold(args[1], "as") {
				st.name = args[2]
			}
			stages = append(stages, st)
			continue
		}
		if len(stages) == 0 {
			continue // ARG before the first FROM
		}
		last := &stages[len(stages)-1]
		last.insts = append(last.insts, n)
	}
	if len(stages) == 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	return stages
}

func nodeArgs(n *parser.Node) []string {
	var args []string
	for x := n.Next; x != nil; x = x.Next {
		args = append(args, x.Value)
	}
	return args
}

func (s dockerStage) find(inst string) []*parser.Node {
	var out []*parser.Node
	for _, n := range s.insts {
		if strings.EqualFold(n.Value, inst) {
			out = append(out, n)
		}
	}
	return out
}

func flagValue(n *parser.Node, name string) (string, bool) {
	for _, f := range n.Flags {
		if v, ok := strings.CutPrefix(f, "--"+name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// shellWords splits a shell-form RUN command like the BuildKit frontend does.
type noEnv struct{}

func (noEnv) Get(string) (string, bool) { return "", false }
func (noEnv) Keys() []string            { return nil }

func shellWords(t *testing.T, cmd string) []string {
	t.Helper()
	words, err := shell.NewLex('\\').ProcessWords(cmd, noEnv{})
	if err != nil {
		t.Fatalf("cannot split %q: %v", cmd, err)
	}
	return words
}

// goBuildRun returns the RUN instruction of the build stage that runs `go build`
// and its words.
func goBuildRun(t *testing.T, stages []dockerStage) (dockerStage, *parser.Node, []string) {
	t.Helper()
	for _, st := range stages[:len(stages)-1] {
		for _, n := range st.find("run") {
			cmd := strings.Join(nodeArgs(n), " ")
			if strings.Contains(cmd, "go build") {
				return st, n, shellWords(t, cmd)
			}
		}
	}
	t.Fatal("no build stage RUNs `go build`")
	return dockerStage{}, nil, nil
}

func TestDockerfileBuildsInSeparateStageFromRuntimeImage(t *testing.T) {
	stages := parseDockerfile(t)
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a multi-stage build", len(stages))
	}
	build := stages[0]
	if build.name == "" {
		t.Fatalf("build stage %q is not named (FROM ... AS build)", build.image)
	}
	final := stages[len(stages)-1]
	copied := false
	for _, n := range final.find("copy") {
		if from, ok := flagValue(n, "from"); ok && from == build.name {
			args := nodeArgs(n)
			if args[len(args)-1] == deployBinary {
				copied = true
			}
		}
	}
	if !copied {
		t.Errorf("final stage does not COPY --from=%s the binary to %s", build.name, deployBinary)
	}
}

var pinnedGoTag = regexp.MustCompile(`^(\d+\.\d+\.\d+)(-[a-z0-9.]+)?$`)

func TestDockerfilePinsBuildImageToGoVersionOfGoMod(t *testing.T) {
	build := parseDockerfile(t)[0]
	image := build.image
	if strings.Contains(image, "@sha256:") {
		image, _, _ = strings.Cut(image, "@") // a digest pins it; still check the tag
	}
	repo, tag, ok := strings.Cut(image, ":")
	if !ok || tag == "" || tag == "latest" {
		t.Fatalf("build image %q has no pinned tag", build.image)
	}
	if repo != "golang" && repo != "docker.io/library/golang" {
		t.Errorf("build image %q is not the official golang image", build.image)
	}
	m := pinnedGoTag.FindStringSubmatch(tag)
	if m == nil {
		t.Fatalf("build image tag %q does not pin a Go patch release (want e.g. 1.26.8-bookworm)", tag)
	}
	// The toolchain in the image must satisfy go.mod, or the build would try to
	// download another toolchain inside the container.
	gomod, err := os.ReadFile(repoFile(t, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && (f[0] == "go" || f[0] == "toolchain") {
			v := strings.TrimPrefix(f[1], "go")
			if want == "" || version.Compare("go"+v, "go"+want) > 0 {
				want = v
			}
		}
	}
	if want == "" {
		t.Fatal("go.mod has no go directive")
	}
	if version.Compare("go"+m[1], "go"+want) < 0 {
		t.Errorf("build image has Go %s, go.mod needs Go %s", m[1], want)
	}
}

func TestDockerfileDownloadsModulesBeforeCopyingSource(t *testing.T) {
	st, buildRun, _ := goBuildRun(t, parseDockerfile(t))
	copyMods, download, copyAll := -1, -1, -1
	for i, n := range st.insts {
		switch {
		case strings.EqualFold(n.Value, "copy"):
			args := nodeArgs(n)
			src := args[:len(args)-1]
			if slices.Contains(src, "go.mod") && slices.Contains(src, "go.sum") && copyMods < 0 {
				copyMods = i
			}
			if slices.Contains(src, ".") && copyAll < 0 {
				copyAll = i
			}
		case strings.EqualFold(n.Value, "run") && download < 0:
			if strings.Contains(strings.Join(nodeArgs(n), " "), "go mod download") {
				download = i
			}
		}
	}
	if !(copyMods >= 0 && copyMods < download && download < copyAll) {
		t.Errorf("want COPY go.mod go.sum, then RUN go mod download, then COPY . (got positions %d, %d, %d)",
			copyMods, download, copyAll)
	}
	if i := slices.Index(st.insts, buildRun); i < copyAll {
		t.Errorf("go build (instruction %d) runs before the source is copied (instruction %d)", i, copyAll)
	}
}

func TestDockerfileBuildsStaticTrimmedStrippedBinary(t *testing.T) {
	st, _, words := goBuildRun(t, parseDockerfile(t))

	cgoOff := slices.Contains(words, "CGO_ENABLED=0")
	for _, n := range st.find("env") {
		args := nodeArgs(n)
		for i := 0; i+1 < len(args); i += 3 { // key, value, "=" triples
			if args[i] == "CGO_ENABLED" && args[i+1] == "0" {
				cgoOff = true
			}
		}
	}
	if !cgoOff {
		t.Error("go build does not run with CGO_ENABLED=0 (the distroless/static image has no libc)")
	}

	build := slices.Index(words, "build")
	if build < 1 || words[build-1] != "go" {
		t.Fatalf("cannot find `go build` in %q", words)
	}
	args := words[build+1:]
	if !slices.Contains(args, "-trimpath") {
		t.Error("go build lacks -trimpath")
	}
	ldflags := ""
	for i, a := range args {
		if a == "-ldflags" && i+1 < len(args) {
			ldflags = args[i+1]
		} else if v, ok := strings.CutPrefix(a, "-ldflags="); ok {
			ldflags = v
		}
	}
	if f := strings.Fields(ldflags); !slices.Contains(f, "-s") || !slices.Contains(f, "-w") {
		t.Errorf(`go build -ldflags is %q, want "-s -w"`, ldflags)
	}
	out := ""
	for i, a := range args {
		if a == "-o" && i+1 < len(args) {
			out = args[i+1]
		}
	}
	if filepath.Base(out) != "gochat" {
		t.Errorf("go build -o %q, want a binary named gochat", out)
	}
	if args[len(args)-1] != "." {
		t.Errorf("go build builds %q, want the main package at the module root (.)", args[len(args)-1])
	}
}

func TestDockerfileRuntimeImageIsScratchOrDistrolessStatic(t *testing.T) {
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	img := final.image
	if img != "scratch" && !strings.HasPrefix(img, "gcr.io/distroless/static") {
		t.Errorf("final image %q, want scratch or gcr.io/distroless/static*", img)
	}
	if strings.HasSuffix(img, ":latest") {
		t.Errorf("final image %q uses the latest tag", img)
	}
	if runs := final.find("run"); len(runs) > 0 {
		t.Errorf("final stage has RUN instructions (%d); the runtime image has no shell", len(runs))
	}
}

func TestDockerfileRunsAsNonRootUser(t *testing.T) {
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	users := final.find("user")
	if len(users) == 0 {
		t.Fatal("final stage sets no USER")
	}
	user := nodeArgs(users[len(users)-1])[0]
	uid, gid, _ := strings.Cut(user, ":")
	for _, id := range []string{uid, gid} {
		if id == "" {
			continue
		}
		n, err := strconv.Atoi(id)
		if err != nil {
			t.Errorf("USER %q: use numeric ids so that Kubernetes runAsNonRoot can verify them", user)
			continue
		}
		if n == 0 {
			t.Errorf("USER %q runs as root", user)
		}
	}
}

func TestDockerfileExposesPort8080(t *testing.T) {
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	var ports []string
	for _, n := range final.find("expose") {
		ports = append(ports, nodeArgs(n)...)
	}
	if !slices.Contains(ports, "8080") && !slices.Contains(ports, "8080/tcp") {
		t.Errorf("final stage EXPOSEs %q, want 8080", ports)
	}
}

func TestDockerfileHealthcheckAndEntrypointRunTheBinary(t *testing.T) {
	stages := parseDockerfile(t)
	final := stages[len(stages)-1]
	hcs := final.find("healthcheck")
	if len(hcs) == 0 {
		t.Fatal("final stage has no HEALTHCHECK")
	}
	hc := hcs[len(hcs)-1]
	args := nodeArgs(hc)
	if len(args) == 0 || !strings.EqualFold(args[0], "cmd") {
		t.Fatalf("HEALTHCHECK %q: want HEALTHCHECK CMD [...]", args)
	}
	if !hc.Attributes["json"] {
		t.Error("HEALTHCHECK CMD is in shell form; the distroless image has no shell, use the exec (JSON) form")
	}
	if want := []string{deployBinary, "-healthcheck"}; !slices.Equal(args[1:], want) {
		t.Errorf("HEALTHCHECK CMD %q, want %q", args[1:], want)
	}

	eps := final.find("entrypoint")
	if len(eps) == 0 {
		t.Fatal("final stage has no ENTRYPOINT")
	}
	ep := eps[len(eps)-1]
	if !ep.Attributes["json"] {
		t.Error("ENTRYPOINT is in shell form; use the exec (JSON) form so the server is PID 1 and gets SIGTERM")
	}
	if args := nodeArgs(ep); len(args) == 0 || args[0] != deployBinary {
		t.Errorf("ENTRYPOINT %q, want [%q]", args, deployBinary)
	}
}

// ---- .dockerignore ----------------------------------------------------------

func TestDockerignoreKeepsSourcesAndDropsNoise(t *testing.T) {
	f, err := os.Open(repoFile(t, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(p string) bool {
		// A file is excluded when it or any parent directory matches.
		parts := strings.Split(p, "/")
		for i := range parts {
			ok, err := pm.MatchesOrParentMatches(strings.Join(parts[:i+1], "/"))
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				return true
			}
		}
		return false
	}
	for _, p := range []string{"go.mod", "go.sum", "main.go", "server/chat.go",
		"server/web/index.html", "server/web/app.js", "server/web/style.css", "pool/pool.go", "bench/main.go"} {
		if excluded(p) {
			t.Errorf(".dockerignore excludes %s, which the build needs", p)
		}
	}
	for _, p := range []string{".git/HEAD", ".git/objects/pack/x.pack", "server/server.test", "gochat",
		"cpu.prof", "bench/out/run1.json", "server/chat_test.go",
		// The nested test module: not part of the binary's build.
		"server/internal/e2e/go.mod", "server/internal/e2e/go.sum", "server/internal/e2e/doc.go",
		"server/internal/e2e/harness_test.go"} {
		if !excluded(p) {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
}

// ---- docker-compose.yml -----------------------------------------------------

func composeDetails(t *testing.T) types.ConfigDetails {
	t.Helper()
	wd := repoRoot(t)
	return types.ConfigDetails{
		WorkingDir:  wd,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(wd, "docker-compose.yml")}},
		Environment: types.Mapping{},
	}
}

// loadCompose loads and validates docker-compose.yml against the Compose
// specification schema, as `docker compose config` does.
func loadCompose(t *testing.T) types.ServiceConfig {
	t.Helper()
	project, err := loader.LoadWithContext(context.Background(), composeDetails(t),
		func(o *loader.Options) { o.SetProjectName("gochat", true) })
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	svc, ok := project.Services["gochat"]
	if !ok {
		t.Fatalf("docker-compose.yml has no service gochat (has %v)", project.ServiceNames())
	}
	return svc
}

func TestComposeFileIsValidWithoutObsoleteVersionKey(t *testing.T) {
	loadCompose(t) // schema validation
	// The validating loader drops `version` with a warning; look at the raw model.
	model, err := loader.LoadModelWithContext(context.Background(), composeDetails(t),
		loader.WithSkipValidation,
		func(o *loader.Options) { o.SetProjectName("gochat", true) })
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := model["version"]; ok {
		t.Error("docker-compose.yml has the obsolete top-level version key")
	}
}

func TestComposeBuildsImageFromRepoDockerfile(t *testing.T) {
	svc := loadCompose(t)
	if svc.Build == nil {
		t.Fatal("service gochat has no build section")
	}
	wd := repoRoot(t)
	if filepath.Clean(svc.Build.Context) != wd {
		t.Errorf("build context %q, want the repository root %q", svc.Build.Context, wd)
	}
	if df := svc.Build.Dockerfile; df != "" && df != "Dockerfile" {
		t.Errorf("build uses Dockerfile %q, want Dockerfile", df)
	}
}

func TestComposePublishesPort8080(t *testing.T) {
	svc := loadCompose(t)
	for _, p := range svc.Ports {
		if p.Target == deployPort && p.Published == strconv.Itoa(deployPort) && (p.Protocol == "" || p.Protocol == "tcp") {
			return
		}
	}
	t.Errorf("service gochat does not publish %d:%d (ports %+v)", deployPort, deployPort, svc.Ports)
}

func TestComposeHealthcheckRunsTheBinary(t *testing.T) {
	svc := loadCompose(t)
	hc := svc.HealthCheck
	if hc == nil || hc.Disable {
		t.Fatal("service gochat has no healthcheck")
	}
	want := types.HealthCheckTest{"CMD", deployBinary, "-healthcheck"}
	if !slices.Equal(hc.Test, want) {
		t.Errorf("healthcheck test %q, want %q (exec form: the image has no shell)", hc.Test, want)
	}
	if hc.Interval == nil || time.Duration(*hc.Interval) <= 0 {
		t.Error("healthcheck has no interval")
	}
}

func TestComposeRestartsUnlessStopped(t *testing.T) {
	if svc := loadCompose(t); svc.Restart != types.RestartPolicyUnlessStopped {
		t.Errorf("restart %q, want %q", svc.Restart, types.RestartPolicyUnlessStopped)
	}
}

func TestComposeConfiguresServerThroughGochatEnvironment(t *testing.T) {
	svc := loadCompose(t)
	env := map[string]string{}
	for k, v := range svc.Environment {
		if !strings.HasPrefix(k, "GOCHAT_") {
			t.Errorf("environment variable %s is not a GOCHAT_* setting", k)
		}
		if v == nil {
			t.Errorf("environment variable %s has no value", k)
			continue
		}
		env[k] = *v
	}
	if len(env) < 2 {
		t.Errorf("environment sets %d GOCHAT_* variables, want the address and the logging set", len(env))
	}
	if addr, ok := env["GOCHAT_ADDR"]; ok && !strings.HasSuffix(addr, ":"+strconv.Itoa(deployPort)) {
		t.Errorf("GOCHAT_ADDR=%q does not listen on the published port %d", addr, deployPort)
	}
	if f, ok := env["GOCHAT_LOG_FORMAT"]; ok && f != "json" && f != "text" {
		t.Errorf("GOCHAT_LOG_FORMAT=%q, want json or text", f)
	}
}

func TestComposeRaisesOpenFileLimitForManyConnections(t *testing.T) {
	svc := loadCompose(t)
	nofile := svc.Ulimits["nofile"]
	if nofile == nil {
		t.Fatal("service gochat sets no nofile ulimit")
	}
	soft, hard := nofile.Soft, nofile.Hard
	if nofile.Single != 0 {
		soft, hard = nofile.Single, nofile.Single
	}
	if soft < 65536 || hard < soft {
		t.Errorf("nofile ulimit soft=%d hard=%d, want soft >= 65536 and hard >= soft", soft, hard)
	}
}

func TestComposeStopGracePeriodOutlastsServerShutdown(t *testing.T) {
	svc := loadCompose(t)
	if svc.StopGracePeriod == nil {
		t.Fatalf("no stop_grace_period: Docker's default 10 s must cover a %v drain explicitly", deployShutdownTimeout)
	}
	shutdown := deployShutdownTimeout
	if v := svc.Environment["GOCHAT_SHUTDOWN_TIMEOUT"]; v != nil {
		d, err := time.ParseDuration(*v)
		if err != nil {
			t.Fatalf("GOCHAT_SHUTDOWN_TIMEOUT=%q: %v", *v, err)
		}
		shutdown = d
	}
	if grace := time.Duration(*svc.StopGracePeriod); grace <= shutdown {
		t.Errorf("stop_grace_period %v is not longer than the server's shutdown timeout %v", grace, shutdown)
	}
	if s := svc.StopSignal; s != "" && s != "SIGTERM" && s != "SIGINT" {
		t.Errorf("stop_signal %q does not start the graceful drain (SIGTERM/SIGINT)", s)
	}
}
