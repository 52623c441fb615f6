package server

import (
	"bytes"
	"flag"
	"strings"
	"testing"

	"gochat/server/internal/natsrelay/natstest"
)

// parseNATSFlags parses args and then the environment as gochat does, and
// validates the result.
func parseNATSFlags(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	fs.SetOutput(&bytes.Buffer{})
	var cfg Config
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if err := ApplyEnv(fs); err != nil {
		return cfg, err
	}
	return cfg, cfg.Defaults().Validate()
}

// Every credential and TLS flag, by flag and by GOCHAT_ variable, reaches
// the NATS connection's settings with real files.
func TestNATSAuthFlagsWithRealFiles(t *testing.T) {
	files := natstest.TLS(t)
	seed, _, _ := natstest.UserSeed(t)
	creds, _ := natstest.Creds(t)
	const url = "nats://127.0.0.1:4222"
	for _, c := range []struct {
		name string
		vals map[string]string
		want func(Config) bool
	}{
		{"creds", map[string]string{"nats-creds": creds}, func(c Config) bool { return c.natsAuth().Creds == creds }},
		{"nkey", map[string]string{"nats-nkey": seed}, func(c Config) bool { return c.natsAuth().NKey == seed }},
		{"user", map[string]string{"nats-user": "alice", "nats-password": "pw"}, func(c Config) bool {
			a := c.natsAuth()
			return a.User == "alice" && a.Password == "pw"
		}},
		{"token", map[string]string{"nats-token": "tok"}, func(c Config) bool { return c.natsAuth().Token == "tok" }},
		{"tls", map[string]string{"nats-ca": files.CA, "nats-cert": files.ClientCert, "nats-key": files.ClientKey}, func(c Config) bool {
			a := c.natsAuth()
			return a.CA == files.CA && a.Cert == files.ClientCert && a.Key == files.ClientKey
		}},
	} {
		for _, viaEnv := range []bool{false, true} {
			t.Run(c.name+map[bool]string{false: " by flag", true: " by env"}[viaEnv], func(t *testing.T) {
				args := []string{"-nats", url}
				for k, v := range c.vals {
					if viaEnv {
						t.Setenv(EnvName(k), v)
					} else {
						args = append(args, "-"+k, v)
					}
				}
				cfg, err := parseNATSFlags(t, args...)
				if err != nil {
					t.Fatal(err)
				}
				if !c.want(cfg) {
					t.Errorf("settings not passed on: %v", cfg.natsAuth())
				}
			})
		}
	}
}

// Readable files of the wrong kind, and combinations that cannot work,
// stop the start with an error naming the setting, never the secret.
func TestNATSAuthRefusedAtStart(t *testing.T) {
	files := natstest.TLS(t)
	seed, _, seedText := natstest.UserSeed(t)
	const url, secret = "nats://127.0.0.1:4222", "pw-never-shown"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-nats", url, "-nats-nkey", files.CA}, "nats-nkey"},
		{[]string{"-nats", url, "-nats-creds", seed}, "nats-creds"},
		{[]string{"-nats", url, "-nats-ca", seed}, "nats-ca"},
		{[]string{"-nats", url, "-nats-cert", files.ClientCert}, "nats-cert is set without nats-key"},
		{[]string{"-nats", url, "-nats-password", secret}, "nats-password is set without nats-user"},
		{[]string{"-nats", url, "-nats-token", secret, "-nats-user", "alice", "-nats-password", secret}, "nats-token and nats-user"},
		{[]string{"-nats-user", "alice", "-nats-password", secret}, "password=[redacted]) but nats is empty"},
		{[]string{"-nats-token", secret}, "(token=[redacted]) but nats is empty"},
		{[]string{"-nats-ca", files.CA}, "but nats is empty"},
	} {
		_, err := parseNATSFlags(t, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want it to say %q", c.args, err, c.want)
			continue
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), seedText) {
			t.Errorf("%q: error shows a secret: %v", c.args, err)
		}
	}
}

// -h shows no secret, even one set in the environment, and a secret flag
// never quotes its value back.
func TestNATSSecretsStayOutOfHelp(t *testing.T) {
	t.Setenv(EnvName("nats-password"), "env-secret-pw")
	t.Setenv(EnvName("nats-token"), "env-secret-token")
	fs := flag.NewFlagSet("gochat", flag.ContinueOnError)
	var help bytes.Buffer
	fs.SetOutput(&help)
	var cfg Config
	cfg.RegisterFlags(fs)
	if err := ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	fs.PrintDefaults()
	for _, f := range []string{"nats-password", "nats-token"} {
		if got := fs.Lookup(f).Value.String(); got != "[redacted]" {
			t.Errorf("-%s String() = %q", f, got)
		}
	}
	for _, f := range []string{"-nats-creds", "-nats-nkey", "-nats-user", "-nats-password", "-nats-token", "-nats-ca", "-nats-cert", "-nats-key"} {
		if !strings.Contains(help.String(), "  "+f+" ") {
			t.Errorf("-h lacks %s", f)
		}
	}
	if strings.Contains(help.String(), "env-secret") {
		t.Errorf("-h shows a secret:\n%s", help.String())
	}
	if cfg.NATSPassword != "env-secret-pw" || cfg.NATSToken != "env-secret-token" {
		t.Error("secrets from the environment not applied")
	}
}
