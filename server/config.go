package server

import (
	"flag"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gochat/server/internal/natsrelay"
)

// Config is the whole of gochat's configuration. The zero value of every field
// means "use the default"; Defaults fills them in and Validate checks them, both
// in one place. RegisterFlags exposes every field as a flag whose help text is
// the field's description below.
//
// Zero means "default" only for Go callers (server.New(server.Config{}, nil)
// keeps working). The flag layer never passes on a zero it did not mean:
// each flag checks its own value when it is set, from the command line or a
// GOCHAT_ variable, and refuses a 0 that would be invalid, or stores the
// field's explicit spelling where 0 means something (ErrorBudgetNone,
// OverloadQueueOff), so a flag's 0 can never turn into the default.
type Config struct {
	// Addr is the TCP address serving /ws, the page, health and metrics.
	Addr string
	// Workers bounds the goroutines that decode frames and fan out broadcasts.
	Workers int
	// MaxConns caps open connections; upgrades beyond it get 503.
	MaxConns int
	// MaxMessage caps one inbound WebSocket message in bytes (after
	// reassembly of fragments); larger ones are closed with 1009.
	MaxMessage int
	// MaxContent caps chat content in characters; longer content gets an Error reply.
	MaxContent int
	// JoinTimeout is how long an upgraded client may take to send a valid join.
	JoinTimeout time.Duration
	// HandshakeTimeout is the absolute deadline for the HTTP upgrade request.
	HandshakeTimeout time.Duration
	// PingInterval is how often the server pings every client.
	PingInterval time.Duration
	// PongTimeout is how long past a ping interval a silent client is kept.
	PongTimeout time.Duration
	// WriteTimeout is how long a client may leave pending output untouched
	// (not read a single byte) before it is closed as a slow consumer.
	WriteTimeout time.Duration
	// Rate is the sustained chat messages per second allowed per client.
	Rate float64
	// Burst is how many messages a client may send at once above Rate.
	Burst int
	// ErrorBudget is how many bad messages a client may send per minute
	// before it is closed with 1008. Zero means the default (5);
	// ErrorBudgetNone means none: the first bad message closes.
	ErrorBudget int
	// SendQueue is the outbound bytes a client may have pending before it is
	// closed as a slow consumer.
	SendQueue int
	// Presence turns join/leave notices on. Nil means on.
	Presence *bool
	// PresenceSummary is the member count above which join and leave
	// notices are summarized once per broadcast round ("alice, bob and
	// 1,312 others joined the chat") instead of sent one per client.
	PresenceSummary int
	// PresenceMax, if positive, is the member count above which a room
	// sends no join/leave notices at all. 0: no such limit.
	PresenceMax int
	// MaxRooms caps the rooms that exist at once; a client asking for a new
	// room beyond it gets 503.
	MaxRooms int
	// History is how many messages each room keeps for ?history=N and
	// ?since=ID. Zero means the default (100); HistoryNone keeps none.
	History int
	// HistoryAge drops kept messages older than this.
	HistoryAge time.Duration
	// MaxOutbound bounds the bytes pending for all clients together;
	// past it, broadcast rounds wait for clients to read (senders are told
	// "Server busy" once the broadcast queue is full too).
	MaxOutbound int
	// MaxInbound bounds the bytes buffered for incomplete frames and
	// fragmented messages of all clients together; past it, clients with
	// partial input are not read until memory frees up.
	MaxInbound int
	// Origins lists the allowed cross-site Origins (scheme://host[:port]);
	// same-origin and Origin-less requests are always allowed.
	Origins []string
	// RoundInterval is the shortest time between the starts of two
	// broadcast rounds of a busy room whose rounds are expensive (one over
	// about a thousand members or more): messages published meanwhile go
	// out together, one write per member instead of one per message, which
	// is where the CPU per delivery goes (README, Performance). A room idle
	// for longer sends at once, and a small room is never held back, so
	// this bounds the latency it adds. Zero means the default (65ms);
	// RoundIntervalNone paces by round cost alone.
	RoundInterval time.Duration
	// ShutdownTimeout bounds the graceful close handshakes at shutdown.
	ShutdownTimeout time.Duration
	// CloseLinger bounds how long a closing connection may take to flush its
	// close frame and echo the peer's before the socket is closed.
	CloseLinger time.Duration
	// OverloadQueue is the worker-pool backlog (queued tasks) which, when
	// sustained for a second, makes new connections be shed with 503. Zero
	// means the default (4096); OverloadQueueOff never sheds.
	OverloadQueue int
	// NATS is the NATS URL (or comma-separated URLs) through which several
	// gochat nodes share one chat; empty means a single node (cluster.go).
	NATS string
	// NATSSubject prefixes the NATS subjects of one cluster's rooms and
	// names its JetStream stream and key-value buckets.
	NATSSubject string
	// NATSCreds is a NATS .creds file (a user JWT and its nkey seed).
	NATSCreds string
	// NATSNKey is a file holding an nkey user seed (SU...).
	NATSNKey string
	// NATSUser and NATSPassword authenticate to NATS by name and password.
	NATSUser     string
	NATSPassword string
	// NATSToken authenticates to NATS by token.
	NATSToken string
	// NATSCA is a PEM file of the CAs that sign the NATS server's
	// certificate; setting it requires TLS.
	NATSCA string
	// NATSCert and NATSKey are a PEM client certificate and its key, for a
	// NATS server that verifies its clients; setting them requires TLS.
	NATSCert, NATSKey string
}

// natsAuth is the NATS credentials and TLS files of c.
func (c Config) natsAuth() natsrelay.Auth {
	return natsrelay.Auth{Creds: c.NATSCreds, NKey: c.NATSNKey, User: c.NATSUser, Password: c.NATSPassword,
		Token: c.NATSToken, CA: c.NATSCA, Cert: c.NATSCert, Key: c.NATSKey}
}

// Default values. Kept together so README and -h agree with the code.
const (
	DefaultAddr             = ":8080"
	DefaultMaxConns         = 100_000
	DefaultMaxMessage       = 16 << 10
	DefaultMaxContent       = 2000
	DefaultJoinTimeout      = 10 * time.Second
	DefaultHandshakeTimeout = 5 * time.Second
	DefaultPingInterval     = 25 * time.Second
	DefaultPongTimeout      = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultRate             = 10
	DefaultBurst            = 20
	DefaultErrorBudget      = 5
	DefaultSendQueue        = 1 << 20
	DefaultShutdownTimeout  = 5 * time.Second
	DefaultCloseLinger      = 2 * time.Second
	DefaultRoundInterval    = 65 * time.Millisecond
	DefaultPresenceSummary  = 2000
	DefaultMaxRooms         = 10_000
	DefaultHistory          = 100
	DefaultHistoryAge       = time.Hour
	DefaultMaxOutbound      = 64 << 20
	DefaultMaxInbound       = 64 << 20
	DefaultNATSSubject      = "gochat.room"
	DefaultOverloadQueue    = 4096

	// ErrorBudgetNone is Config.ErrorBudget for "no bad message is
	// tolerated" (the flag's -error-budget 0), since a zero field means
	// the default.
	ErrorBudgetNone = -1
	// RoundIntervalNone is Config.RoundInterval for "no minimum interval"
	// (the flag's -round-interval 0).
	RoundIntervalNone = time.Duration(-1)
	// HistoryNone is Config.History for "rooms keep no history" (the
	// flag's -history 0).
	HistoryNone = -1
	// OverloadQueueOff is Config.OverloadQueue for "never shed new
	// connections on worker backlog" (the flag's -overload-queue 0).
	OverloadQueueOff = math.MaxInt
)

// maxHandshake caps the HTTP request head; larger requests get 431.
const maxHandshake = 8 << 10

// Defaults returns c with every zero field set to its default.
func (c Config) Defaults() Config {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.Workers == 0 {
		c.Workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxMessage == 0 {
		c.MaxMessage = DefaultMaxMessage
	}
	if c.MaxContent == 0 {
		c.MaxContent = DefaultMaxContent
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.PingInterval == 0 {
		c.PingInterval = DefaultPingInterval
	}
	if c.PongTimeout == 0 {
		c.PongTimeout = DefaultPongTimeout
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.Rate == 0 {
		c.Rate = DefaultRate
	}
	if c.Burst == 0 {
		c.Burst = DefaultBurst
	}
	if c.ErrorBudget == 0 {
		c.ErrorBudget = DefaultErrorBudget
	}
	if c.SendQueue == 0 {
		c.SendQueue = DefaultSendQueue
	}
	if c.Presence == nil {
		on := true
		c.Presence = &on
	}
	if c.RoundInterval == 0 {
		c.RoundInterval = DefaultRoundInterval
	}
	if c.PresenceSummary == 0 {
		c.PresenceSummary = DefaultPresenceSummary
	}
	if c.MaxRooms == 0 {
		c.MaxRooms = DefaultMaxRooms
	}
	if c.History == 0 {
		c.History = DefaultHistory
	}
	if c.HistoryAge == 0 {
		c.HistoryAge = DefaultHistoryAge
	}
	if c.MaxOutbound == 0 {
		c.MaxOutbound = DefaultMaxOutbound
	}
	if c.MaxInbound == 0 {
		c.MaxInbound = DefaultMaxInbound
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.CloseLinger == 0 {
		c.CloseLinger = DefaultCloseLinger
	}
	if c.OverloadQueue == 0 {
		c.OverloadQueue = DefaultOverloadQueue
	}
	if c.NATSSubject == "" {
		c.NATSSubject = DefaultNATSSubject
	}
	return c
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	switch {
	case c.Workers < 1:
		return fmt.Errorf("gochat: workers %d < 1", c.Workers)
	case c.MaxConns < 1:
		return fmt.Errorf("gochat: max-conns %d < 1", c.MaxConns)
	case c.MaxMessage < 64:
		return fmt.Errorf("gochat: max-message %d < 64 bytes", c.MaxMessage)
	case c.MaxContent < 1:
		return fmt.Errorf("gochat: max-content %d < 1", c.MaxContent)
	case !(c.Rate > 0) || math.IsInf(c.Rate, 0) || c.Burst < 1: // !(>0) also catches NaN
		return fmt.Errorf("gochat: rate %v / burst %d must be positive and finite", c.Rate, c.Burst)
	case c.ErrorBudget < ErrorBudgetNone:
		return fmt.Errorf("gochat: error-budget %d < 0", c.ErrorBudget)
	case c.SendQueue < 1024:
		return fmt.Errorf("gochat: send-queue %d < 1024 bytes", c.SendQueue)
	case c.MaxOutbound < c.SendQueue:
		return fmt.Errorf("gochat: max-outbound %d < send-queue %d", c.MaxOutbound, c.SendQueue)
	case c.MaxInbound < c.MaxMessage:
		return fmt.Errorf("gochat: max-inbound %d < max-message %d", c.MaxInbound, c.MaxMessage)
	case c.MaxRooms < 1:
		return fmt.Errorf("gochat: max-rooms %d < 1", c.MaxRooms)
	case c.PresenceMax < 0:
		return fmt.Errorf("gochat: presence-max %d < 0", c.PresenceMax)
	case c.PresenceSummary < 1:
		return fmt.Errorf("gochat: presence-summary %d < 1", c.PresenceSummary)
	case c.History < HistoryNone:
		return fmt.Errorf("gochat: history %d < 0", c.History)
	case c.OverloadQueue < 0:
		return fmt.Errorf("gochat: overload-queue %d < 0", c.OverloadQueue)
	case c.JoinTimeout <= 0, c.PingInterval <= 0, c.PongTimeout <= 0, c.ShutdownTimeout <= 0, c.HandshakeTimeout <= 0, c.CloseLinger <= 0, c.WriteTimeout <= 0, c.HistoryAge <= 0:
		return fmt.Errorf("gochat: timeouts and intervals must be positive")
	case c.RoundInterval < RoundIntervalNone:
		return fmt.Errorf("gochat: round-interval %v < 0", c.RoundInterval)
	case c.NATS != "" && !natsrelay.ValidSubject(c.NATSSubject):
		return fmt.Errorf("gochat: nats-subject %q: want dot-separated tokens, no wildcards or spaces", c.NATSSubject)
	}
	if err := checkAddr(c.Addr); err != nil {
		return fmt.Errorf("gochat: addr %q: %w", c.Addr, err)
	}
	if err := checkNATS(c.NATS); err != nil {
		return fmt.Errorf("gochat: nats: %w", err)
	}
	// Credentials without -nats would be ignored; a typo in a deployment
	// should not quietly run a single node. Options reads and checks the
	// files, so a bad one stops the start here.
	if auth := c.natsAuth(); c.NATS == "" && auth != (natsrelay.Auth{}) {
		return fmt.Errorf("gochat: NATS credentials or TLS files are set (%s) but nats is empty", auth)
	} else if _, err := auth.Options(); err != nil {
		return err
	}
	for _, o := range c.Origins {
		if !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			return fmt.Errorf("gochat: origin %q: want scheme://host[:port]", o)
		}
	}
	return nil
}

// presence reports whether join/leave notices are on.
func (c Config) presence() bool { return c.Presence == nil || *c.Presence }

// RegisterFlags binds every Config field to a flag on fs, with the defaults
// shown in -h. Call ApplyEnv after fs.Parse to fill unset flags from GOCHAT_*
// variables. Every flag refuses a value out of its range when it is set
// (command line or environment), naming itself; -h says what 0 means.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := Config{}.Defaults()
	*c = d
	fs.Var(addrValue{&c.Addr}, "addr", "TCP `host:port` for /ws, the page, /healthz, /readyz and /metrics (\":8080\": every interface; not empty)")
	fs.Var(intFlag(&c.Workers, 1, 0), "workers", "worker goroutines decoding frames and fanning out broadcasts (`n` >= 1)")
	fs.Var(intFlag(&c.MaxConns, 1, 0), "max-conns", "maximum open connections; more get 503 (`n` >= 1; gochat warns at start if the open-file limit allows fewer)")
	fs.Var(intFlag(&c.MaxMessage, 64, 0), "max-message", "maximum inbound WebSocket message in bytes; larger is closed 1009 (`bytes` >= 64)")
	fs.Var(intFlag(&c.MaxContent, 1, 0), "max-content", "maximum chat content in characters; longer gets an Error reply (`n` >= 1)")
	fs.Var(durationFlag(&c.JoinTimeout, false), "join-timeout", "time allowed from upgrade to a valid join (`duration` > 0)")
	fs.Var(durationFlag(&c.HandshakeTimeout, false), "handshake-timeout", "absolute deadline for the HTTP upgrade request (`duration` > 0)")
	fs.Var(durationFlag(&c.PingInterval, false), "ping-interval", "interval between server pings (`duration` > 0)")
	fs.Var(durationFlag(&c.PongTimeout, false), "pong-timeout", "silence allowed past a ping interval before a client is dropped (`duration` > 0)")
	fs.Var(durationFlag(&c.WriteTimeout, false), "write-timeout", "time a client may leave pending output unread before it is closed as a slow consumer (`duration` > 0)")
	fs.Var(rateValue{&c.Rate}, "rate", "chat messages per second allowed per client (a finite `number` > 0; there is no off switch)")
	fs.Var(intFlag(&c.Burst, 1, 0), "burst", "messages a client may send at once above -rate (`n` >= 1)")
	fs.Var(intFlag(&c.ErrorBudget, 0, ErrorBudgetNone), "error-budget", "bad messages per minute before a client is closed 1008 (`n` >= 0; 0: the first bad message closes)")
	fs.Var(intFlag(&c.SendQueue, 1024, 0), "send-queue", "outbound bytes pending per client before it is closed as a slow consumer (`bytes` >= 1024)")
	fs.BoolVar(c.Presence, "presence", true, "send join/leave notices")
	fs.Var(intFlag(&c.PresenceSummary, 1, 0), "presence-summary", "member count above which a room's join/leave notices are summarized once per broadcast round (`n` >= 1)")
	fs.Var(intFlag(&c.PresenceMax, 0, 0), "presence-max", "member count above which a room sends no join/leave notices at all (`n` >= 0; 0: no limit)")
	fs.Var(intFlag(&c.MaxRooms, 1, 0), "max-rooms", "rooms that may exist at once; a client opening one more gets 503 (`n` >= 1)")
	fs.Var(intFlag(&c.History, 0, HistoryNone), "history", "messages each room keeps for ?history=N and ?since=ID (`n` >= 0; 0: none)")
	fs.Var(durationFlag(&c.HistoryAge, false), "history-age", "kept messages older than this are dropped (`duration` > 0)")
	fs.Var(intFlag(&c.MaxOutbound, 1024, 0), "max-outbound", "bytes pending for all clients together; past it broadcasts wait for clients to read (`bytes` >= -send-queue)")
	fs.Var(intFlag(&c.MaxInbound, 1024, 0), "max-inbound", "bytes buffered for all clients' incomplete messages; past it such clients are not read until memory frees up (`bytes` >= -max-message)")
	fs.Var(originsValue{&c.Origins}, "origins", "comma-separated cross-site `origins` (scheme://host[:port]) allowed to connect (same-origin and Origin-less clients always are)")
	fs.Var(durationFlag(&c.RoundInterval, true), "round-interval", "shortest time between a busy large room's broadcast rounds; messages in between share one write per client; idle and small rooms send at once (`duration` >= 0; 0: pace by round cost alone)")
	fs.Var(durationFlag(&c.ShutdownTimeout, false), "shutdown-timeout", "time allowed for close handshakes at shutdown (`duration` > 0)")
	fs.Var(natsValue{&c.NATS}, "nats", "NATS `URLs` (comma-separated, nats:// or tls://) to share the chat with other gochat nodes, e.g. nats://127.0.0.1:4222; empty: single node")
	fs.Var(subjectValue{&c.NATSSubject}, "nats-subject", "`prefix` of the NATS subjects of one cluster's rooms, which also names its JetStream stream and buckets (dot-separated tokens, no wildcards)")
	fs.Var(fileValue{&c.NATSCreds}, "nats-creds", "NATS .creds `file` (user JWT and nkey seed, as nsc writes it) to authenticate with; one of -nats-creds, -nats-nkey, -nats-token, -nats-user")
	fs.Var(fileValue{&c.NATSNKey}, "nats-nkey", "`file` holding an nkey user seed (SU..., as nk -gen user writes it) to authenticate to NATS with")
	fs.StringVar(&c.NATSUser, "nats-user", "", "NATS user `name`; needs -nats-password")
	fs.Var(secretValue{&c.NATSPassword}, "nats-password", "NATS `password` of -nats-user; never logged (prefer GOCHAT_NATS_PASSWORD: a command line is visible to every local user)")
	fs.Var(secretValue{&c.NATSToken}, "nats-token", "NATS authentication `token`; never logged (prefer GOCHAT_NATS_TOKEN: a command line is visible to every local user)")
	fs.Var(fileValue{&c.NATSCA}, "nats-ca", "PEM `file` of the CAs that sign the NATS server's certificate; requires TLS (without it: the system's CAs)")
	fs.Var(fileValue{&c.NATSCert}, "nats-cert", "PEM client certificate `file` for a NATS server that verifies clients; needs -nats-key; requires TLS")
	fs.Var(fileValue{&c.NATSKey}, "nats-key", "PEM private key `file` of -nats-cert")
	fs.Var(durationFlag(&c.CloseLinger, false), "close-linger", "time a closing client has to read the close frame and answer it (`duration` > 0)")
	fs.Var(intFlag(&c.OverloadQueue, 0, OverloadQueueOff), "overload-queue", "worker-pool backlog that, sustained for 1s, sheds new connections with 503 (`n` >= 0; 0: never shed)")
}

// intValue is an int flag with a lower bound. A 0 given when 0 is in range
// is stored as zero (ErrorBudgetNone, OverloadQueueOff), the field's
// explicit spelling of "0", since a zero field would mean the default.
type intValue struct {
	p         *int
	min, zero int
}

func intFlag(p *int, min, zero int) *intValue { return &intValue{p, min, zero} }

func (v *intValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	if v.zero != 0 && *v.p == v.zero {
		return "0"
	}
	return strconv.Itoa(*v.p)
}

func (v *intValue) Set(s string) error {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 0, strconv.IntSize)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok {
			err = ne.Err // "invalid syntax", "value out of range"
		}
		return fmt.Errorf("want an integer >= %d: %w", v.min, err)
	}
	if int(n) < v.min {
		return fmt.Errorf("%d is below the minimum %d", n, v.min)
	}
	if n == 0 && v.zero != 0 {
		n = int64(v.zero)
	}
	*v.p = int(n)
	return nil
}

// durationValue is a duration flag that refuses negative values, and 0
// unless zeroOK (0 then means "off" and Defaults leaves it alone).
type durationValue struct {
	p      *time.Duration
	zeroOK bool
}

func durationFlag(p *time.Duration, zeroOK bool) *durationValue { return &durationValue{p, zeroOK} }

func (v *durationValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	if *v.p == RoundIntervalNone {
		return "0s"
	}
	return v.p.String()
}

func (v *durationValue) Set(s string) error {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	switch {
	case err != nil:
		return fmt.Errorf("want a duration such as 500ms or 10s: %w", err)
	case d < 0:
		return fmt.Errorf("%v is negative", d)
	case d == 0 && !v.zeroOK:
		return fmt.Errorf("must be more than 0")
	case d == 0:
		d = RoundIntervalNone // the only duration flag whose 0 means something
	}
	*v.p = d
	return nil
}

// rateValue is a positive, finite float (ParseFloat accepts NaN and Inf).
type rateValue struct{ p *float64 }

func (v rateValue) String() string {
	if v.p == nil {
		return ""
	}
	return strconv.FormatFloat(*v.p, 'g', -1, 64)
}

func (v rateValue) Set(s string) error {
	f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !(f > 0) || math.IsInf(f, 0) {
		return fmt.Errorf("want a finite number > 0 (messages per second)")
	}
	*v.p = f
	return nil
}

type addrValue struct{ p *string }

func (v addrValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v addrValue) Set(s string) error {
	if err := checkAddr(s); err != nil {
		return err
	}
	*v.p = s
	return nil
}

// checkAddr accepts host:port with a numeric port 0-65535 (host may be empty).
func checkAddr(s string) error {
	if s == "" {
		return fmt.Errorf("empty; want host:port such as :8080")
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port such as :8080 or 127.0.0.1:8080")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n > 65535 {
		return fmt.Errorf("port %q: want a number 0-65535", port)
	}
	return nil
}

type natsValue struct{ p *string }

func (v natsValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v natsValue) Set(s string) error {
	if err := checkNATS(s); err != nil {
		return err
	}
	*v.p = strings.TrimSpace(s)
	return nil
}

// checkNATS accepts "" (single node) or comma-separated URLs with a NATS
// scheme and a host; a bare word such as "bogus" is refused rather than
// taken for a host name to retry forever.
func checkNATS(s string) error {
	if strings.TrimSpace(s) == "" {
		return nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		u, err := url.Parse(part)
		if err != nil || u.Host == "" || u.Hostname() == "" {
			return fmt.Errorf("%q: want a URL such as nats://127.0.0.1:4222", natsrelay.RedactURL(part))
		}
		switch u.Scheme {
		case "nats", "tls", "ws", "wss":
		default:
			return fmt.Errorf("%q: scheme %q: want nats://, tls://, ws:// or wss://", natsrelay.RedactURL(part), u.Scheme)
		}
		if p := u.Port(); p != "" {
			if _, err := strconv.ParseUint(p, 10, 16); err != nil {
				return fmt.Errorf("%q: port %q: want a number 0-65535", natsrelay.RedactURL(part), p)
			}
		}
	}
	return nil
}

type subjectValue struct{ p *string }

func (v subjectValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v subjectValue) Set(s string) error {
	if !natsrelay.ValidSubject(s) {
		return fmt.Errorf("want dot-separated tokens, no wildcards or spaces")
	}
	*v.p = s
	return nil
}

// fileValue is a path to a file that must be readable when the flag is
// set, so that a wrong path fails at start naming its flag. Empty: unset.
type fileValue struct{ p *string }

func (v fileValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v fileValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s != "" {
		f, err := os.Open(s)
		if err != nil {
			return fmt.Errorf("want a readable file: %w", err)
		}
		st, err := f.Stat()
		f.Close()
		if err != nil {
			return fmt.Errorf("want a readable file: %w", err)
		}
		if !st.Mode().IsRegular() {
			return fmt.Errorf("%s is not a regular file", s)
		}
	}
	*v.p = s
	return nil
}

// secretValue is a password or token. Set never fails, since the flag
// package and ApplyEnv would quote the value in the error; String never
// shows it.
type secretValue struct{ p *string }

func (v secretValue) String() string {
	if v.p == nil || *v.p == "" {
		return ""
	}
	return "[redacted]"
}

func (v secretValue) Set(s string) error {
	*v.p = s
	return nil
}

type originsValue struct{ p *[]string }

func (v originsValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}

func (v originsValue) Set(s string) error {
	var out []string
	for _, o := range strings.Split(s, ",") {
		if o = strings.TrimSpace(o); o == "" {
			continue
		}
		if !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
			return fmt.Errorf("origin %q: want scheme://host[:port]", o)
		}
		out = append(out, strings.TrimSuffix(o, "/"))
	}
	*v.p = out
	return nil
}

// ApplyEnv sets every flag not given on the command line from its environment
// variable GOCHAT_<NAME> (upper case, '-' as '_'), so flags win over the
// environment. Call it after fs.Parse. The flags named in flagOnly are never
// read from the environment (gochat's -healthcheck: a GOCHAT_HEALTHCHECK in
// a container's environment must not turn the server into a probe).
func ApplyEnv(fs *flag.FlagSet, flagOnly ...string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for _, n := range flagOnly {
		set[n] = true
	}
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("gochat: %s=%q (-%s): %w", EnvName(f.Name), v, f.Name, e)
			}
		}
	})
	return err
}

// EnvName is the environment variable for a flag name.
func EnvName(flagName string) string {
	return "GOCHAT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
