package main

import (
	"bytes"
	"flag"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"gochat/server"
)

// flagCase is one value for one flag: accepted or refused.
type flagCase struct {
	val string
	ok  bool
}

// Values every numeric flag sees: zero, negative, NaN/Inf, overflow, garbage.
var (
	intCases = []flagCase{{"0", false}, {"-3", false}, {"NaN", false}, {"Inf", false},
		{"99999999999999999999", false}, {"1e3", false}, {"many", false}, {"", false}, {"7.5", false}}
	durCases = []flagCase{{"3s", true}, {"1500ms", true}, {"-1s", false}, {"-5s", false}, {"NaN", false}, {"Inf", false},
		{"9999999999h", false}, {"10", false}, {"soon", false}, {"", false}}
	posDurCases = append([]flagCase{{"0", false}, {"0s", false}}, durCases...)
)

// flagTable lists, for every flag gochat has, the values to try. What 0
// means is decided here: invalid for everything but -error-budget (the
// first bad message closes), -overload-queue (never shed) and
// -round-interval (no pacing).
var flagTable = map[string][]flagCase{
	"addr": {{"127.0.0.1:0", true}, {":9000", true}, {"[::1]:80", true}, {"", false}, {"9000", false},
		{":99999", false}, {":-1", false}, {"bogus", false}, {"0", false}, {":NaN", false}},
	"workers":     append([]flagCase{{"1", true}, {"64", true}}, intCases...),
	"max-conns":   append([]flagCase{{"1", true}, {"100000", true}}, intCases...),
	"max-message": append([]flagCase{{"64", true}, {"63", false}, {"1048576", true}}, intCases...),
	"max-content": append([]flagCase{{"1", true}, {"500", true}}, intCases...),
	"burst":       append([]flagCase{{"1", true}, {"100", true}}, intCases...),
	"send-queue":  append([]flagCase{{"1024", true}, {"1023", false}, {"4194304", true}}, intCases...),
	"error-budget": {{"0", true}, {"1", true}, {"5", true}, {"-1", false}, {"-3", false}, {"NaN", false}, {"Inf", false},
		{"99999999999999999999", false}, {"many", false}, {"", false}},
	"overload-queue": {{"0", true}, {"1", true}, {"4096", true}, {"-1", false}, {"NaN", false}, {"Inf", false},
		{"99999999999999999999", false}, {"many", false}, {"", false}},
	"join-timeout":      posDurCases,
	"handshake-timeout": posDurCases,
	"ping-interval":     posDurCases,
	"pong-timeout":      posDurCases,
	"shutdown-timeout":  posDurCases,
	"close-linger":      posDurCases,
	"round-interval":    append([]flagCase{{"0", true}, {"0s", true}}, durCases...),
	"write-timeout":     append([]flagCase{{"3s", true}}, posDurCases...),
	"history-age":       append([]flagCase{{"1h", true}}, posDurCases...),
	"presence-summary":  append([]flagCase{{"1", true}, {"2000", true}}, intCases...),
	"max-rooms":         append([]flagCase{{"1", true}, {"10000", true}}, intCases...),
	"max-outbound":      append([]flagCase{{"1048576", true}, {"1023", false}}, intCases...),
	"max-inbound":       append([]flagCase{{"1048576", true}, {"1023", false}}, intCases...),
	"presence-max": {{"0", true}, {"1", true}, {"5000", true}, {"-1", false}, {"NaN", false}, {"Inf", false},
		{"99999999999999999999", false}, {"many", false}, {"", false}},
	"history": {{"0", true}, {"1", true}, {"100", true}, {"-1", false}, {"NaN", false}, {"Inf", false},
		{"99999999999999999999", false}, {"many", false}, {"", false}},
	"rate": {{"2.5", true}, {"100", true}, {"0.1", true}, {"0", false}, {"-1", false}, {"NaN", false}, {"nan", false},
		{"Inf", false}, {"+Inf", false}, {"-Inf", false}, {"1e400", false}, {"many", false}, {"", false}},
	"presence": {{"true", true}, {"false", true}, {"0", true}, {"1", true}, {"-1", false}, {"NaN", false}, {"yes please", false}},
	"origins": {{"https://chat.example", true}, {"https://a.example, http://b.example:8080/", true}, {"", true},
		{"chat.example", false}, {"https://ok.example,ftp://x", false}},
	"nats": {{"nats://127.0.0.1:4222", true}, {"nats://a:4222,tls://b:4222", true}, {"", true},
		{"bogus", false}, {"127.0.0.1:4222", false}, {"http://x:4222", false}, {"nats://:4222", false},
		{"nats://h:NaN", false}, {"nats://h:99999", false}},
	"nats-subject": {{"gochat.room", true}, {"a.b.c", true}, {"", false}, {"a.*", false}, {"a.>", false}, {"a b", false}, {"a..b", false}},
	"log-level":    {{"debug", true}, {"WARN", true}, {"error", true}, {"", false}, {"loud", false}, {"0", false}},
	"log-format":   {{"json", true}, {"text", true}, {"", false}, {"xml", false}, {"0", false}},

	// Credentials: a secret is never refused by its flag (the error would
	// quote it); combinations are checked as a whole (flagCompanions).
	"nats-user":     {{"alice", true}, {"svc gochat", true}},
	"nats-password": {{"hunter2", true}, {" spaces and ünïcode ", true}},
	"nats-token":    {{"s3cr3t", true}, {"", true}},
	"nats-creds":    {{"", true}, {"/nonexistent/user.creds", false}, {".", false}},
	"nats-nkey":     {{"", true}, {"/nonexistent/user.nk", false}, {".", false}},
	"nats-ca":       {{"", true}, {"/nonexistent/ca.pem", false}, {".", false}},
	"nats-cert":     {{"", true}, {"/nonexistent/cert.pem", false}, {".", false}},
	"nats-key":      {{"", true}, {"/nonexistent/key.pem", false}, {".", false}},
}

// flagCompanions are the flags a flag's good values need to make a
// configuration server.New accepts (credentials need -nats, a password
// needs a user).
var flagCompanions = map[string][]string{
	"nats-user":     {"-nats=nats://127.0.0.1:4222", "-nats-password=pw"},
	"nats-password": {"-nats=nats://127.0.0.1:4222", "-nats-user=alice"},
	"nats-token":    {"-nats=nats://127.0.0.1:4222"},
}

// TestEveryFlagIsInTheTable keeps the table complete: a new flag must say
// what it accepts.
func TestEveryFlagIsInTheTable(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var cfg server.Config
	cfg.RegisterFlags(fs)
	names := []string{"log-level", "log-format"}
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	for _, n := range names {
		if _, ok := flagTable[n]; !ok {
			t.Errorf("flag -%s has no row in flagTable", n)
		}
	}
}

// TestFlagValues drives every flag, and its GOCHAT_ variable, with good,
// zero, negative, NaN/Inf, overflow and garbage values: a bad one must be
// refused with an error naming the flag (or the variable), never replaced
// by a default; a good one must give a configuration server.New accepts.
func TestFlagValues(t *testing.T) {
	for name, cases := range flagTable {
		for _, c := range cases {
			for _, viaEnv := range []bool{false, true} {
				args := []string{"-" + name + "=" + c.val}
				label, want := "-"+name+"="+c.val, "-"+name
				if viaEnv {
					args = nil
					label, want = server.EnvName(name)+"="+c.val, server.EnvName(name)
				}
				args = append(args, flagCompanions[name]...)
				t.Run(label, func(t *testing.T) {
					if viaEnv {
						t.Setenv(server.EnvName(name), c.val)
					}
					o, err := parseArgs(args, &bytes.Buffer{})
					if !c.ok {
						if err == nil {
							t.Fatalf("accepted; want an error naming %s", want)
						}
						if !strings.Contains(err.Error(), want) {
							t.Fatalf("error %q does not name %s", err, want)
						}
						return
					}
					if err != nil {
						t.Fatalf("refused: %v", err)
					}
					if err := o.cfg.Defaults().Validate(); err != nil {
						t.Fatalf("accepted, but server.New would refuse it: %v", err)
					}
					if _, err := newLogger(&bytes.Buffer{}, o.logLevel, o.logFormat); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}

// TestZeroMeansWhatHelpSays: the three flags where 0 is allowed keep their
// meaning through server.Config.Defaults instead of becoming the default.
func TestZeroMeansWhatHelpSays(t *testing.T) {
	o, err := parseArgs([]string{"-error-budget", "0", "-overload-queue", "0", "-round-interval", "0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := o.cfg.Defaults()
	if cfg.ErrorBudget != server.ErrorBudgetNone {
		t.Errorf("-error-budget 0: ErrorBudget = %d, want ErrorBudgetNone (the first bad message closes)", cfg.ErrorBudget)
	}
	if cfg.OverloadQueue != server.OverloadQueueOff {
		t.Errorf("-overload-queue 0: OverloadQueue = %d, want OverloadQueueOff (never shed)", cfg.OverloadQueue)
	}
	if cfg.RoundInterval != server.RoundIntervalNone {
		t.Errorf("-round-interval 0: RoundInterval = %v, want RoundIntervalNone (pace by round cost alone)", cfg.RoundInterval)
	}
	// Go callers: a zero field is still the default.
	d := server.Config{}.Defaults()
	if d.ErrorBudget != server.DefaultErrorBudget || d.OverloadQueue != server.DefaultOverloadQueue || d.Addr != server.DefaultAddr {
		t.Errorf("zero Config defaults: %+v", d)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	// The flags print their zero as 0 again in -h and error texts.
	var help bytes.Buffer
	run([]string{"-h"}, &help)
	if !strings.Contains(help.String(), "0: the first bad message closes") || !strings.Contains(help.String(), "0: never shed") {
		t.Errorf("-h does not say what 0 means:\n%s", help.String())
	}
}

func TestEnvironmentKeepsMeaningOfZero(t *testing.T) {
	t.Setenv("GOCHAT_ERROR_BUDGET", "0")
	o, err := parseArgs(nil, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Defaults().ErrorBudget != server.ErrorBudgetNone {
		t.Fatalf("GOCHAT_ERROR_BUDGET=0 gave ErrorBudget %d", o.cfg.Defaults().ErrorBudget)
	}
}

func TestStrayArgumentsAreRefused(t *testing.T) {
	for _, args := range [][]string{{"serve"}, {"-addr", ":9000", "extra"}, {"--", "-workers", "3"}} {
		_, err := parseArgs(args, &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), "unexpected argument") {
			t.Errorf("%q: err = %v, want unexpected argument", args, err)
		}
	}
}

func TestBadFlagErrorIsOneLineWithoutUsage(t *testing.T) {
	var out bytes.Buffer
	err := run([]string{"-workers", "0"}, &out)
	if err == nil || !strings.Contains(err.Error(), "-workers") {
		t.Fatalf("err = %v", err)
	}
	if out.Len() != 0 {
		t.Fatalf("stderr has %q; the error line alone should say it", out.String())
	}
}

// Go callers keep the zero-means-default rule, and Validate catches what
// the flags catch for them too.
func TestValidateRefusesWhatFlagsRefuse(t *testing.T) {
	for _, c := range []server.Config{
		{Rate: math.NaN()}, {Rate: math.Inf(1)}, {CloseLinger: -time.Second}, {RoundInterval: -5 * time.Second},
		{OverloadQueue: -1}, {ErrorBudget: -2}, {NATS: "bogus"}, {Addr: "9000"},
	} {
		if err := c.Defaults().Validate(); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// A NATS password or token is never echoed: not in the error a bad
// combination gives, by flag or by variable, nor in -h.
func TestNATSSecretsAreNeverEchoed(t *testing.T) {
	const secret = "s3cr3t-never-echoed"
	for _, c := range []struct {
		args []string
		env  string
	}{
		{[]string{"-nats", "nats://127.0.0.1:4222", "-nats-password", secret}, ""},
		{[]string{"-nats", "nats://127.0.0.1:4222"}, "nats-password"},
		{[]string{"-nats-token", secret}, ""},
		{nil, "nats-token"},
		{[]string{"-h"}, "nats-password"},
	} {
		t.Run(fmt.Sprintf("%q %s", c.args, c.env), func(t *testing.T) {
			if c.env != "" {
				t.Setenv(server.EnvName(c.env), secret)
			}
			var stderr bytes.Buffer
			o, err := parseArgs(c.args, &stderr)
			if o != nil && err == nil {
				err = o.cfg.Defaults().Validate() // what server.New checks first
			}
			if !slices.Equal(c.args, []string{"-h"}) && err == nil {
				t.Error("accepted")
			}
			if shown := fmt.Sprint(err) + stderr.String(); strings.Contains(shown, secret) {
				t.Errorf("secret shown: %s", shown)
			}
		})
	}
}
