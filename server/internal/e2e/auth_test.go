package e2e

// NATS credentials and TLS (-nats-user/-nats-password, -nats-token,
// -nats-nkey, -nats-creds, -nats-ca, -nats-cert/-nats-key) against an
// embedded nats-server that requires them: the right ones connect the
// node, anything else leaves it serving alone, and no secret reaches the
// node's log.

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/nats-io/jwt/v2"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"gochat/server"
	"gochat/server/internal/natsrelay/natstest"
)

// natsLog keeps the errors and warnings an embedded nats-server logs, so
// that a test can wait for the server to have refused a node.
type natsLog struct{ buf lockedBuffer }

func (l *natsLog) add(format string, v []any) { fmt.Fprintf(&l.buf, format+"\n", v...) }
func (l *natsLog) Noticef(string, ...any)     {}
func (l *natsLog) Debugf(string, ...any)      {}
func (l *natsLog) Tracef(string, ...any)      {}
func (l *natsLog) Warnf(f string, v ...any)   { l.add(f, v) }
func (l *natsLog) Errorf(f string, v ...any)  { l.add(f, v) }
func (l *natsLog) Fatalf(f string, v ...any)  { l.add(f, v) }

// startSecuredNATS runs a nats-server with o's authorization or TLS and
// records what it logs.
func startSecuredNATS(t *testing.T, o *natsserver.Options) (*natsserver.Server, *natsLog) {
	t.Helper()
	ns := startNATSWith(t, o)
	l := &natsLog{}
	ns.SetLogger(l, false, false)
	return ns, l
}

// refused starts a node with cfg against ns and checks that ns refuses it:
// the server logs why (want) at least twice, so the node has retried, and
// the node stays disconnected, serving alone, with none of secrets in its
// log. Other nodes may be connected to ns (connected of them).
func refused(t *testing.T, ns *natsserver.Server, nl *natsLog, connected int, cfg server.Config, want string, secrets ...string) {
	t.Helper()
	before := strings.Count(nl.buf.String(), want)
	cfg.NATS = ns.ClientURL()
	s := startServer(t, cfg)
	eventually(t, clusterWait, fmt.Sprintf("nats-server logs %q for the node twice", want), func() bool {
		return strings.Count(nl.buf.String(), want) >= before+2
	})
	if got := metric(t, s.base, "gochat_cluster_connected"); got != 0 {
		t.Errorf("gochat_cluster_connected %v with the wrong credentials", got)
	}
	if n := len(gochatNodes(t, ns)); n != connected {
		t.Errorf("nats-server has %d gochat nodes, want %d", n, connected)
	}
	eventually(t, clusterWait, "the node logs why NATS refuses it", func() bool {
		return strings.Contains(s.log.String(), "nats connection failing")
	})
	alice := joinChat(t, s.url, "alice") // alone, but serving
	alice.send(`{"content":"local"}`)
	alice.nextIs(chatMsg{"alice", "local"})
	noSecrets(t, s, secrets...)
}

// noSecrets fails if any secret appears in the node's log.
func noSecrets(t *testing.T, s *node, secrets ...string) {
	t.Helper()
	logs := s.log.String()
	for _, secret := range secrets {
		if secret != "" && strings.Contains(logs, strings.TrimSpace(secret)) {
			t.Errorf("a secret (%d bytes) is in the node's log:\n%s", len(secret), logs)
		}
	}
}

func TestNATSAuthUserPassword(t *testing.T) {
	checkLeaks(t)
	const pw, wrong = "right-pw-Zq81", "wrong-pw-Kx27"
	ns, nl := startSecuredNATS(t, &natsserver.Options{Username: "gochat", Password: pw})
	cfg := server.Config{NATSUser: "gochat", NATSPassword: pw}

	a, _ := startNode(t, ns, cfg)
	b, _ := startNode(t, ns, cfg)
	alice := joinChat(t, a.url, "alice")
	bob := joinChat(t, b.url, "bob")
	alice.nextIs(chatMsg{"System", "bob joined the chat"})
	bob.send(`{"content":"through an authenticated NATS"}`)
	alice.nextIs(chatMsg{"bob", "through an authenticated NATS"})
	if !strings.Contains(a.log.String(), `"auth":"user=gochat password=[redacted]"`) {
		t.Errorf("the start-up line does not summarize the credentials:\n%s", a.log)
	}
	noSecrets(t, a, pw)

	refused(t, ns, nl, 2, server.Config{}, "authentication error")
	refused(t, ns, nl, 2, server.Config{NATSUser: "gochat", NATSPassword: wrong}, "authentication error", wrong, pw)
}

func TestNATSAuthToken(t *testing.T) {
	checkLeaks(t)
	const token, wrong = "tok-right-9d8f", "tok-wrong-1a2b"
	ns, nl := startSecuredNATS(t, &natsserver.Options{Authorization: token})
	a, _ := startNode(t, ns, server.Config{NATSToken: token})
	if !strings.Contains(a.log.String(), `"auth":"token=[redacted]"`) {
		t.Errorf("the start-up line does not summarize the credentials:\n%s", a.log)
	}
	noSecrets(t, a, token)
	refused(t, ns, nl, 1, server.Config{}, "authentication error")
	refused(t, ns, nl, 1, server.Config{NATSToken: wrong}, "authentication error", wrong, token)
}

func TestNATSAuthNKey(t *testing.T) {
	checkLeaks(t)
	seedFile, pub, seed := natstest.UserSeed(t)
	otherFile, _, otherSeed := natstest.UserSeed(t)
	ns, nl := startSecuredNATS(t, &natsserver.Options{Nkeys: []*natsserver.NkeyUser{{Nkey: pub}}})
	a, _ := startNode(t, ns, server.Config{NATSNKey: seedFile})
	noSecrets(t, a, seed)
	refused(t, ns, nl, 1, server.Config{}, "authentication error")
	refused(t, ns, nl, 1, server.Config{NATSNKey: otherFile}, "authentication error", otherSeed, seed)
}

// Decentralized auth: an operator trusts an account, which signs the
// user JWT of the .creds file.
func TestNATSAuthCreds(t *testing.T) {
	checkLeaks(t)
	operator, err := nkeys.CreateOperator()
	if err != nil {
		t.Fatal(err)
	}
	account, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	opPub, _ := operator.PublicKey()
	accPub, _ := account.PublicKey()
	userPub, _ := user.PublicKey()
	userSeed, _ := user.Seed()
	accClaims := jwt.NewAccountClaims(accPub)
	// The cluster's stream and buckets need JetStream in the account.
	accClaims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
	accJWT, err := accClaims.Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	sys, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	sysPub, _ := sys.PublicKey()
	sysJWT, err := jwt.NewAccountClaims(sysPub).Encode(operator)
	if err != nil {
		t.Fatal(err)
	}
	userJWT, err := jwt.NewUserClaims(userPub).Encode(account)
	if err != nil {
		t.Fatal(err)
	}
	resolver := &natsserver.MemAccResolver{}
	for pub, claims := range map[string]string{accPub: accJWT, sysPub: sysJWT} {
		if err := resolver.Store(pub, claims); err != nil {
			t.Fatal(err)
		}
	}
	creds := natstest.WriteCreds(t, userJWT, userSeed)

	ns, nl := startSecuredNATS(t, &natsserver.Options{TrustedKeys: []string{opPub}, AccountResolver: resolver, SystemAccount: sysPub})
	a, _ := startNode(t, ns, server.Config{NATSCreds: creds})
	noSecrets(t, a, string(userSeed))

	refused(t, ns, nl, 1, server.Config{}, "authentication error")
	untrusted, untrustedSeed := natstest.Creds(t) // signed by an account the operator never signed
	refused(t, ns, nl, 1, server.Config{NATSCreds: untrusted}, "authentication error", untrustedSeed, string(userSeed))
}

// TLS both ways: the node checks the server's certificate against -nats-ca
// and presents -nats-cert, which the server requires.
func TestNATSAuthTLS(t *testing.T) {
	checkLeaks(t)
	files := natstest.TLS(t)
	tc, err := natsserver.GenTLSConfig(&natsserver.TLSConfigOpts{
		CertFile: files.ServerCert, KeyFile: files.ServerKey, CaFile: files.CA, Verify: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ns, nl := startSecuredNATS(t, &natsserver.Options{TLS: true, TLSVerify: true, TLSConfig: tc, TLSTimeout: 2})
	a, _ := startNode(t, ns, server.Config{NATSCA: files.CA, NATSCert: files.ClientCert, NATSKey: files.ClientKey})
	b, _ := startNode(t, ns, server.Config{NATSCA: files.CA, NATSCert: files.ClientCert, NATSKey: files.ClientKey})
	alice := joinChat(t, a.url, "alice")
	bob := joinChat(t, b.url, "bob")
	alice.nextIs(chatMsg{"System", "bob joined the chat"})
	bob.send(`{"content":"over mutual TLS"}`)
	alice.nextIs(chatMsg{"bob", "over mutual TLS"})

	key, err := os.ReadFile(files.ClientKey)
	if err != nil {
		t.Fatal(err)
	}
	keyBody := strings.Split(string(key), "\n")[1] // a line of the key itself
	noSecrets(t, a, keyBody)

	// No client certificate: the server refuses the handshake.
	refused(t, ns, nl, 2, server.Config{NATSCA: files.CA}, "TLS handshake error")
	// A certificate but not the CA: the node does not trust the server.
	refused(t, ns, nl, 2, server.Config{NATSCert: files.ClientCert, NATSKey: files.ClientKey}, "TLS handshake error")
	// A certificate from another CA: the server does not trust the node.
	other := natstest.TLS(t)
	refused(t, ns, nl, 2, server.Config{NATSCA: files.CA, NATSCert: other.ClientCert, NATSKey: other.ClientKey}, "TLS handshake error")
}
