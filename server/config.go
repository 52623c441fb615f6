package server

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"gochat/server/internal/natsrelay"
)

// Config is the whole of gochat's configuration. The zero value of every field
// means "use the default"; Defaults fills them in and Validate checks them, both
// in one place. RegisterFlags exposes every field as a flag whose help text is
// the field's description below.
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
	// before it is closed with 1008.
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
	// ?since=ID. Negative keeps none.
	History int
	// HistoryAge drops kept messages older than this. Negative keeps them
	// until History pushes them out.
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
	// RoundInterval is the shortest time between two broadcast rounds. Under
	// load, messages published meanwhile go out together, one write per
	// member instead of one per message; an idle hub sends at once.
	RoundInterval time.Duration
	// ShutdownTimeout bounds the graceful close handshakes at shutdown.
	ShutdownTimeout time.Duration
	// CloseLinger bounds how long a closing connection may take to flush its
	// close frame and echo the peer's before the socket is closed.
	CloseLinger time.Duration
	// OverloadQueue is the worker-pool backlog (queued tasks) which, when
	// sustained for a second, makes new connections be shed with 503.
	OverloadQueue int
	// NATS is the NATS URL (or comma-separated URLs) through which several
	// gochat nodes share one chat; empty means a single node (cluster.go).
	NATS string
	// NATSSubject is the NATS subject the nodes of one chat share.
	NATSSubject string
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
	DefaultPresenceSummary  = 2000
	DefaultMaxRooms         = 10_000
	DefaultHistory          = 100
	DefaultHistoryAge       = time.Hour
	DefaultMaxOutbound      = 64 << 20
	DefaultMaxInbound       = 64 << 20
	DefaultNATSSubject      = "gochat.room"
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
		c.OverloadQueue = 4096
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
	case c.Rate <= 0 || c.Burst < 1:
		return fmt.Errorf("gochat: rate %v / burst %d must be positive", c.Rate, c.Burst)
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
	case c.PresenceSummary < 0:
		return fmt.Errorf("gochat: presence-summary %d < 0", c.PresenceSummary)
	case c.JoinTimeout <= 0, c.PingInterval <= 0, c.PongTimeout <= 0, c.ShutdownTimeout <= 0, c.HandshakeTimeout <= 0, c.WriteTimeout <= 0:
		return fmt.Errorf("gochat: timeouts and intervals must be positive")
	case c.NATS != "" && !natsrelay.ValidSubject(c.NATSSubject):
		return fmt.Errorf("gochat: nats-subject %q: want dot-separated tokens, no wildcards or spaces", c.NATSSubject)
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
// variables.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := Config{}.Defaults()
	*c = d
	fs.StringVar(&c.Addr, "addr", d.Addr, "TCP address for /ws, the page, /healthz, /readyz and /metrics")
	fs.IntVar(&c.Workers, "workers", d.Workers, "worker goroutines decoding frames and fanning out broadcasts")
	fs.IntVar(&c.MaxConns, "max-conns", d.MaxConns, "maximum open connections; more get 503")
	fs.IntVar(&c.MaxMessage, "max-message", d.MaxMessage, "maximum inbound WebSocket message in bytes; larger is closed 1009")
	fs.IntVar(&c.MaxContent, "max-content", d.MaxContent, "maximum chat content in characters; longer gets an Error reply")
	fs.DurationVar(&c.JoinTimeout, "join-timeout", d.JoinTimeout, "time allowed from upgrade to a valid join")
	fs.DurationVar(&c.HandshakeTimeout, "handshake-timeout", d.HandshakeTimeout, "absolute deadline for the HTTP upgrade request")
	fs.DurationVar(&c.PingInterval, "ping-interval", d.PingInterval, "interval between server pings")
	fs.DurationVar(&c.PongTimeout, "pong-timeout", d.PongTimeout, "silence allowed past a ping interval before a client is dropped")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", d.WriteTimeout, "time a client may leave pending output unread before it is closed as a slow consumer")
	fs.Float64Var(&c.Rate, "rate", d.Rate, "chat messages per second allowed per client")
	fs.IntVar(&c.Burst, "burst", d.Burst, "messages a client may send at once above -rate")
	fs.IntVar(&c.ErrorBudget, "error-budget", d.ErrorBudget, "bad messages per minute before a client is closed 1008")
	fs.IntVar(&c.SendQueue, "send-queue", d.SendQueue, "outbound bytes pending per client before it is closed as a slow consumer")
	fs.BoolVar(c.Presence, "presence", true, "send join/leave notices")
	fs.IntVar(&c.PresenceSummary, "presence-summary", d.PresenceSummary, "member count above which join/leave notices are summarized once per broadcast round")
	fs.IntVar(&c.PresenceMax, "presence-max", d.PresenceMax, "member count above which a room sends no join/leave notices at all; 0: no limit")
	fs.IntVar(&c.MaxRooms, "max-rooms", d.MaxRooms, "rooms that may exist at once; a client opening one more gets 503")
	fs.IntVar(&c.History, "history", d.History, "messages each room keeps for ?history=N and ?since=ID; -1: none")
	fs.DurationVar(&c.HistoryAge, "history-age", d.HistoryAge, "kept messages older than this are dropped; -1s: no age limit")
	fs.IntVar(&c.MaxOutbound, "max-outbound", d.MaxOutbound, "bytes pending for all clients together; past it broadcasts wait for clients to read")
	fs.IntVar(&c.MaxInbound, "max-inbound", d.MaxInbound, "bytes buffered for incomplete client messages together; past it such clients are not read until memory frees up")
	fs.Func("origins", "comma-separated cross-site Origins allowed to connect (same-origin and Origin-less clients always are)", func(s string) error {
		c.Origins = c.Origins[:0]
		for _, o := range strings.Split(s, ",") {
			if o = strings.TrimSpace(o); o != "" {
				c.Origins = append(c.Origins, strings.TrimSuffix(o, "/"))
			}
		}
		return nil
	})
	fs.DurationVar(&c.RoundInterval, "round-interval", d.RoundInterval, "shortest time between broadcast rounds; under load, messages in between share one write per client")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", d.ShutdownTimeout, "time allowed for close handshakes at shutdown")
	fs.StringVar(&c.NATS, "nats", d.NATS, "NATS URL to share the chat with other gochat nodes, e.g. nats://127.0.0.1:4222; empty: single node")
	fs.StringVar(&c.NATSSubject, "nats-subject", d.NATSSubject, "NATS subject shared by the gochat nodes of one chat")
	fs.DurationVar(&c.CloseLinger, "close-linger", d.CloseLinger, "time a closing client has to read the close frame and answer it")
	fs.IntVar(&c.OverloadQueue, "overload-queue", d.OverloadQueue, "worker-pool backlog that, sustained for 1s, sheds new connections with 503")
}

// ApplyEnv sets every flag not given on the command line from its environment
// variable GOCHAT_<NAME> (upper case, '-' as '_'), so flags win over the
// environment. Call it after fs.Parse.
func ApplyEnv(fs *flag.FlagSet) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v, ok := os.LookupEnv(EnvName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("gochat: %s=%q: %w", EnvName(f.Name), v, e)
			}
		}
	})
	return err
}

// EnvName is the environment variable for a flag name.
func EnvName(flagName string) string {
	return "GOCHAT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}
