package natsrelay

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// Auth is how a node proves itself to NATS, and how it checks NATS. Every
// field is optional; the zero value connects as an anonymous client, over
// TLS only if the URL says tls://. File fields are paths, read at start (so
// a missing or malformed file is an error then) and again by the NATS
// client at each reconnect (so rotated files are picked up).
//
// At most one identity: Creds, NKey, Token, or User with Password. The
// secrets (Password, Token, and the contents of the Creds and NKey files)
// appear in no error and no String.
type Auth struct {
	Creds    string // .creds file: a user JWT and its nkey seed (decentralized auth)
	NKey     string // file holding an nkey user seed (SU...), as for `nats --nkey`
	User     string // user name, with Password
	Password string // secret
	Token    string // secret
	CA       string // PEM file of the CAs that signed the NATS server's certificate; implies TLS
	Cert     string // PEM client certificate, for a server that verifies clients; implies TLS
	Key      string // PEM private key of Cert
}

// Options returns the nats.go options that present a's identity and set
// up its TLS, after checking that the combination makes sense and that
// every file is readable and well-formed. Errors name the setting (as
// the flag is named, without the dash) and file paths, never a secret.
func (a Auth) Options() ([]nats.Option, error) {
	var ids []string
	for _, f := range []struct {
		name string
		set  bool
	}{{"nats-creds", a.Creds != ""}, {"nats-nkey", a.NKey != ""}, {"nats-token", a.Token != ""}, {"nats-user", a.User != ""}} {
		if f.set {
			ids = append(ids, f.name)
		}
	}
	switch {
	case len(ids) > 1:
		return nil, fmt.Errorf("gochat: %s are set: a node has one identity, use one of nats-creds, nats-nkey, nats-token or nats-user", strings.Join(ids, " and "))
	case a.Password != "" && a.User == "":
		return nil, fmt.Errorf("gochat: nats-password is set without nats-user")
	case a.User != "" && a.Password == "":
		return nil, fmt.Errorf("gochat: nats-user is set without nats-password")
	case a.Cert != "" && a.Key == "":
		return nil, fmt.Errorf("gochat: nats-cert is set without nats-key")
	case a.Key != "" && a.Cert == "":
		return nil, fmt.Errorf("gochat: nats-key is set without nats-cert")
	}

	var opts []nats.Option
	switch {
	case a.Creds != "":
		if err := checkCreds(a.Creds); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserCredentials(a.Creds))
	case a.NKey != "":
		if err := checkSeedFile(a.NKey); err != nil {
			return nil, err
		}
		o, err := nats.NkeyOptionFromSeed(a.NKey)
		if err != nil { // checked above; only a file changed since would fail here
			return nil, fmt.Errorf("gochat: nats-nkey %s: %w", a.NKey, err)
		}
		opts = append(opts, o)
	case a.Token != "":
		opts = append(opts, nats.Token(a.Token))
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	}

	if a.CA != "" {
		pem, err := os.ReadFile(a.CA)
		if err != nil {
			return nil, fmt.Errorf("gochat: nats-ca: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("gochat: nats-ca %s: no PEM certificate in it", a.CA)
		}
		opts = append(opts, nats.RootCAs(a.CA))
	}
	if a.Cert != "" {
		if _, err := tls.LoadX509KeyPair(a.Cert, a.Key); err != nil {
			return nil, fmt.Errorf("gochat: nats-cert %s / nats-key %s: %w", a.Cert, a.Key, err)
		}
		opts = append(opts, nats.ClientCert(a.Cert, a.Key))
	}
	return opts, nil
}

// checkCreds reads a .creds file and checks that it holds a user JWT and
// a user seed; the errors say what is wrong, never what is in it.
func checkCreds(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("gochat: nats-creds: %w", err)
	}
	defer wipe(b)
	// ParseDecoratedJWT returns the whole file when it finds no JWT block.
	jwt, err := nkeys.ParseDecoratedJWT(b)
	if err != nil || !strings.Contains(string(b), "NATS USER JWT") || strings.Count(jwt, ".") != 2 {
		return fmt.Errorf("gochat: nats-creds %s: no user JWT block in it (want the file `nsc generate creds` writes)", path)
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("gochat: nats-creds %s: no user nkey seed in it: %w", path, err)
	}
	kp.Wipe()
	return nil
}

// checkSeedFile reads an nkey seed file and checks that it holds a user
// seed (SU...), the kind a server's `nkey:` user entry verifies.
func checkSeedFile(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("gochat: nats-nkey: %w", err)
	}
	defer wipe(b)
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("gochat: nats-nkey %s: want a user seed (SU...) as `nk -gen user` writes: %w", path, err)
	}
	kp.Wipe()
	return nil
}

// wipe overwrites key material read from a file once it is checked.
func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// String summarizes a for logs, secrets redacted:
// "user=alice password=[redacted] ca=/etc/nats/ca.pem", or "none".
func (a Auth) String() string {
	var b strings.Builder
	add := func(k, v string) {
		if v == "" {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(k + "=" + v)
	}
	redact := func(s string) string {
		if s == "" {
			return ""
		}
		return "[redacted]"
	}
	add("creds", a.Creds)
	add("nkey", a.NKey)
	add("user", a.User)
	add("password", redact(a.Password))
	add("token", redact(a.Token))
	add("ca", a.CA)
	add("cert", a.Cert)
	add("key", a.Key)
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// LogValue keeps secrets out of structured logs too: slog's JSON handler
// would otherwise print every field.
func (a Auth) LogValue() slog.Value { return slog.StringValue(a.String()) }

// GoString keeps them out of %#v.
func (a Auth) GoString() string { return "natsrelay.Auth{" + a.String() + "}" }
