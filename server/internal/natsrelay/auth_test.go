package natsrelay

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"gochat/server/internal/natsrelay/natstest"
)

const (
	testPassword = "pw-hunter2-do-not-log"
	testToken    = "tok-s3cr3t-do-not-log"
)

// applied is what a's options set on a NATS client.
func applied(t *testing.T, a Auth) nats.Options {
	t.Helper()
	opts, err := a.Options()
	if err != nil {
		t.Fatalf("%v: %v", a, err)
	}
	o := nats.GetDefaultOptions()
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatalf("%v: option: %v", a, err)
		}
	}
	return o
}

func TestAuthOptionsSetTheClientUp(t *testing.T) {
	if o := applied(t, Auth{}); o.User != "" || o.Token != "" || o.Nkey != "" || o.UserJWT != nil || o.Secure {
		t.Errorf("zero Auth set something: %+v", o)
	}

	o := applied(t, Auth{User: "alice", Password: testPassword})
	if o.User != "alice" || o.Password != testPassword {
		t.Errorf("user/password: got user %q", o.User)
	}
	if o := applied(t, Auth{Token: testToken}); o.Token != testToken {
		t.Error("token not set")
	}

	seedFile, pub, _ := natstest.UserSeed(t)
	o = applied(t, Auth{NKey: seedFile})
	if o.Nkey != pub || o.SignatureCB == nil {
		t.Errorf("nkey: public key %q, want %q (signature callback set: %v)", o.Nkey, pub, o.SignatureCB != nil)
	}
	if sig, err := o.SignatureCB([]byte("nonce")); err != nil || len(sig) == 0 {
		t.Errorf("nkey cannot sign: %v", err)
	}

	creds, _ := natstest.Creds(t)
	o = applied(t, Auth{Creds: creds})
	if o.UserJWT == nil || o.SignatureCB == nil {
		t.Fatal("creds: no JWT or signature callback")
	}
	if jwt, err := o.UserJWT(); err != nil || strings.Count(jwt, ".") != 2 {
		t.Errorf("creds JWT %q, %v", jwt, err)
	}

	files := natstest.TLS(t)
	o = applied(t, Auth{CA: files.CA})
	if !o.Secure || o.RootCAsCB == nil {
		t.Error("ca: TLS not required or CA not loaded")
	}
	o = applied(t, Auth{CA: files.CA, Cert: files.ClientCert, Key: files.ClientKey, User: "alice", Password: testPassword})
	if !o.Secure || o.RootCAsCB == nil || o.TLSCertCB == nil || o.User != "alice" {
		t.Error("ca + client cert + user: not all set")
	}
	if c, err := o.TLSCertCB(); err != nil || len(c.Certificate) == 0 {
		t.Errorf("client cert not loadable: %v", err)
	}
}

func TestAuthOptionsRefuseWhatCannotWork(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	seedFile, _, seed := natstest.UserSeed(t)
	creds, credsSeed := natstest.Creds(t)
	files := natstest.TLS(t)
	acctSeed := "SAAJ" + strings.Repeat("A", 54) // an account seed's prefix, not a user's
	// Secret-looking text in broken files: it must not come back in errors.
	garbage := write("garbage", "not-a-seed "+testToken+"\n")
	seedOnly := write("seed-only.creds", seed+"\n")
	noPEM := write("ca.txt", "no certificate here")

	for _, c := range []struct {
		name string
		a    Auth
		want string
	}{
		{"password without user", Auth{Password: testPassword}, "nats-password is set without nats-user"},
		{"user without password", Auth{User: "alice"}, "nats-user is set without nats-password"},
		{"user and token", Auth{User: "alice", Password: testPassword, Token: testToken}, "nats-token and nats-user are set"},
		{"creds and nkey", Auth{Creds: creds, NKey: seedFile}, "nats-creds and nats-nkey are set"},
		{"nkey and token", Auth{NKey: seedFile, Token: testToken}, "nats-nkey and nats-token are set"},
		{"cert without key", Auth{Cert: files.ClientCert}, "nats-cert is set without nats-key"},
		{"key without cert", Auth{Key: files.ClientKey}, "nats-key is set without nats-cert"},
		{"missing creds file", Auth{Creds: filepath.Join(dir, "nope.creds")}, "nats-creds: open"},
		{"creds without a JWT", Auth{Creds: seedOnly}, "no user JWT block"},
		{"creds of garbage", Auth{Creds: garbage}, "no user JWT block"},
		{"missing nkey file", Auth{NKey: filepath.Join(dir, "nope.nk")}, "nats-nkey: open"},
		{"nkey file of garbage", Auth{NKey: garbage}, "want a user seed"},
		{"account seed as nkey", Auth{NKey: write("acct.nk", acctSeed)}, "want a user seed"},
		{"empty nkey file", Auth{NKey: write("empty.nk", "")}, "want a user seed"},
		{"missing CA", Auth{CA: filepath.Join(dir, "nope.pem")}, "nats-ca: open"},
		{"CA without PEM", Auth{CA: noPEM}, "no PEM certificate"},
		{"cert with the wrong key", Auth{Cert: files.ClientCert, Key: files.ServerKey}, "private key does not match"},
		{"missing cert", Auth{Cert: filepath.Join(dir, "nope.pem"), Key: files.ClientKey}, "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := c.a.Options()
			if err == nil {
				t.Fatalf("accepted %v", c.a)
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) {
				t.Errorf("error %q, want it to say %q", msg, c.want)
			}
			for _, secret := range []string{testPassword, testToken, seed, credsSeed, acctSeed} {
				if strings.Contains(msg, secret) {
					t.Errorf("error shows a secret: %q", msg)
				}
			}
		})
	}
}

func TestAuthStringRedactsSecrets(t *testing.T) {
	a := Auth{User: "alice", Password: testPassword, Token: testToken, CA: "/etc/nats/ca.pem", NKey: "/run/secrets/user.nk"}
	want := "nkey=/run/secrets/user.nk user=alice password=[redacted] token=[redacted] ca=/etc/nats/ca.pem"
	if got := a.String(); got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if got := (Auth{}).String(); got != "none" {
		t.Errorf("zero Auth: %q", got)
	}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "auth", a)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "auth", a)
	shown := logs.String() + fmt.Sprintf("%v %+v %#v %s", a, a, a, a)
	if strings.Contains(shown, testPassword) || strings.Contains(shown, testToken) {
		t.Errorf("a secret shows in logs or formatting:\n%s", shown)
	}
	if !strings.Contains(logs.String(), `"auth":"nkey=/run/secrets/user.nk user=alice`) {
		t.Errorf("JSON log lacks the summary:\n%s", logs.String())
	}
}
