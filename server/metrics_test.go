package server

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Metric names the test relies on (SPEC §3). One place to change on a rename.
const (
	mConnections   = "gochat_connections"
	mMembers       = "gochat_members"
	mJoins         = "gochat_joins_total"
	mJoinRejects   = "gochat_join_rejects_total"
	mLeaves        = "gochat_leaves_total"
	mMessagesIn    = "gochat_messages_received_total"
	mBroadcasts    = "gochat_broadcasts_total"
	mDeliveries    = "gochat_deliveries_total"
	mBytesOut      = "gochat_sent_bytes_total"
	mRounds        = "gochat_broadcast_rounds_total"
	mSlowConsumers = "gochat_slow_consumer_disconnects_total"
	mDisconnects   = "gochat_disconnects_total"
	mPoolSize      = "gochat_pool_size"
	mPoolRunning   = "gochat_pool_running"
	mPoolWaiting   = "gochat_pool_waiting"
	mLatency       = "gochat_broadcast_latency_seconds"
	mGoroutines    = "go_goroutines"
	mRSS           = "process_resident_memory_bytes"
)

// scrape is one parsed GET /metrics.
type promScrape struct {
	raw  string
	fams map[string]*dto.MetricFamily
}

// promFetch fetches and parses /metrics in the Prometheus text format
// with strict (legacy) name validation.
func promFetch(t testing.TB, hc *http.Client, base string) (*promScrape, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		return nil, fmt.Errorf("GET /metrics: Content-Type %q, want text/plain", ct)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %v\n%s", err, body)
	}
	return &promScrape{raw: string(body), fams: fams}, nil
}

// value is the value of the series name{labels...} (labels as name, value
// pairs); 0 if the series does not exist (yet). Counters, gauges and
// untyped series give their value, histograms their sample count.
func (s *promScrape) value(name string, labels ...string) float64 {
	f := s.fams[name]
	if f == nil {
		return 0
	}
metrics:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue metrics
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	return 0
}

func (s *promScrape) histogram(name string) *dto.Histogram {
	f := s.fams[name]
	if f == nil || len(f.GetMetric()) != 1 {
		return nil
	}
	return f.GetMetric()[0].GetHistogram()
}

// promWant is a series that must have a given value (exactly).
type promWant struct {
	name   string
	labels []string
	want   float64
}

func (e promWant) String() string {
	if len(e.labels) == 0 {
		return e.name
	}
	var kv []string
	for i := 0; i+1 < len(e.labels); i += 2 {
		kv = append(kv, fmt.Sprintf("%s=%q", e.labels[i], e.labels[i+1]))
	}
	return e.name + "{" + strings.Join(kv, ",") + "}"
}

// promWait scrapes until every promWant holds at once and returns that
// scrape; on the deadline it fails listing the series that did not move as
// expected. It waits on observable values, never for a fixed time.
func promWait(t testing.TB, hc *http.Client, base, what string, exps ...promWant) *promScrape {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := promFetch(t, hc, base)
		var bad []string
		if err != nil {
			bad = append(bad, err.Error())
		} else {
			for _, e := range exps {
				if got := s.value(e.name, e.labels...); got != e.want {
					bad = append(bad, fmt.Sprintf("%v = %v, want %v", e, got, e.want))
				}
			}
		}
		if len(bad) == 0 {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics after %s:\n  %s", what, strings.Join(bad, "\n  "))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// promCheckExposition checks every family for HELP and TYPE, the Prometheus
// naming conventions and promlint's rules.
func promCheckExposition(t *testing.T, s *promScrape) {
	t.Helper()
	names := make([]string, 0, len(s.fams))
	for name := range s.fams {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		f := s.fams[name]
		if strings.TrimSpace(f.GetHelp()) == "" {
			t.Errorf("%s: no HELP text", name)
		}
		if !strings.Contains(s.raw, "\n# TYPE "+name+" ") && !strings.HasPrefix(s.raw, "# TYPE "+name+" ") {
			t.Errorf("%s: no TYPE line", name)
		}
		if f.GetType() == dto.MetricType_UNTYPED {
			t.Errorf("%s: untyped", name)
		}
		if !model.LegacyValidation.IsValidMetricName(name) {
			t.Errorf("%s: not a valid metric name", name)
		}
		if name != strings.ToLower(name) {
			t.Errorf("%s: not snake_case", name)
		}
		isCounter := f.GetType() == dto.MetricType_COUNTER
		if isCounter != strings.HasSuffix(name, "_total") {
			t.Errorf("%s: type %v; counters, and only counters, end in _total", name, f.GetType())
		}
		// The unit is the last word of the name, before _total.
		words := strings.Split(strings.TrimSuffix(name, "_total"), "_")
		last := words[len(words)-1]
		for _, w := range words {
			switch w {
			case "seconds", "latency", "duration":
				if last != "seconds" {
					t.Errorf("%s: a duration must end in _seconds (_seconds_total for a counter)", name)
				}
			case "bytes", "memory":
				if last != "bytes" {
					t.Errorf("%s: a size must end in _bytes (_bytes_total for a counter)", name)
				}
			case "ms", "milliseconds", "microseconds", "nanoseconds", "minutes", "hours",
				"kb", "kilobytes", "mb", "megabytes", "bits":
				t.Errorf("%s: non-base unit %q", name, w)
			}
		}
		if strings.HasPrefix(name, "gochat_") || strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		t.Errorf("%s: outside the gochat_, go_ and process_ namespaces", name)
	}
	mfs := make([]*dto.MetricFamily, 0, len(names))
	for _, name := range names {
		mfs = append(mfs, s.fams[name])
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Errorf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// TestMetricsMoveAsClientsComeAndGo checks /metrics (SPEC §3): a well-formed
// exposition covering connections, joins, messages in, deliveries out, bytes
// out, slow-consumer and policy disconnects, worker-pool usage, broadcast
// latency and goroutines, whose values move by exactly what two clients
// joining, chatting and leaving, and one bad join, do.
func TestMetricsMoveAsClientsComeAndGo(t *testing.T) {
	// No server pings during the test: they would add to the bytes out.
	s := startServer(t, Config{PingInterval: time.Hour})
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}

	m0, err := promFetch(t, hc, s.base)
	if err != nil {
		t.Fatal(err)
	}
	promCheckExposition(t, m0)
	wantTypes := map[string]dto.MetricType{
		mConnections: dto.MetricType_GAUGE, mMembers: dto.MetricType_GAUGE,
		mJoins: dto.MetricType_COUNTER, mJoinRejects: dto.MetricType_COUNTER, mLeaves: dto.MetricType_COUNTER,
		mMessagesIn: dto.MetricType_COUNTER, mBroadcasts: dto.MetricType_COUNTER,
		mDeliveries: dto.MetricType_COUNTER, mBytesOut: dto.MetricType_COUNTER, mRounds: dto.MetricType_COUNTER,
		mSlowConsumers: dto.MetricType_COUNTER,
		mPoolSize:      dto.MetricType_GAUGE, mPoolRunning: dto.MetricType_GAUGE, mPoolWaiting: dto.MetricType_GAUGE,
		mLatency:    dto.MetricType_HISTOGRAM,
		mGoroutines: dto.MetricType_GAUGE, mRSS: dto.MetricType_GAUGE,
	}
	var missing []string
	for name, typ := range wantTypes {
		if f := m0.fams[name]; f == nil || f.GetType() != typ {
			missing = append(missing, fmt.Sprintf("%s (a %v)", name, typ))
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		t.Fatalf("/metrics lacks %s:\n%s", strings.Join(missing, ", "), m0.raw)
	}
	if v := m0.value(mGoroutines); v < 1 {
		t.Errorf("%s = %v", mGoroutines, v)
	}
	if v := m0.value(mRSS); v <= 0 {
		t.Errorf("%s = %v", mRSS, v)
	}
	if v := m0.value(mPoolSize); v < 1 {
		t.Errorf("%s = %v, want the worker pool's capacity", mPoolSize, v)
	}
	if m0.value(mConnections) != 0 || m0.value(mMembers) != 0 {
		t.Fatalf("fresh server: %s = %v, %s = %v", mConnections, m0.value(mConnections), mMembers, m0.value(mMembers))
	}

	// Two clients join.
	alice := join(t, s.url, "alice")
	bob := join(t, s.url, "bob")
	alice.waitFor(chatMsg{"System", "bob joined the chat"})
	promWait(t, hc, s.base, "two joins",
		promWant{name: mConnections, want: 2},
		promWant{name: mMembers, want: 2},
		promWant{name: mJoins, want: m0.value(mJoins) + 2},
		promWant{name: mMessagesIn, want: m0.value(mMessagesIn) + 2},
		promWant{name: mBroadcasts, want: m0.value(mBroadcasts) + 2},     // the two join notices
		promWant{name: mDeliveries, want: m0.value(mDeliveries) + 1 + 2}, // alice's to 1 member, bob's to 2
	)
	// Every finished round observes the latency once.
	m1 := promRoundsSettled(t, hc, s.base, "two joins")
	if m1.value(mRounds) < 1 {
		t.Errorf("%s = %v after two joins", mRounds, m1.value(mRounds))
	}
	if m1.value(mBytesOut) <= m0.value(mBytesOut) {
		t.Errorf("%s did not grow with two upgrades and three notices: %v -> %v", mBytesOut, m0.value(mBytesOut), m1.value(mBytesOut))
	}

	// They chat: every message goes to both members.
	sent := []struct {
		from    *client
		name    string
		content string
	}{
		{alice, "alice", "Hello everyone!"},
		{bob, "bob", "Hi alice!"},
		{alice, "alice", "How is everyone?"},
	}
	frameBytes := 0
	for _, m := range sent {
		payload := fmt.Sprintf(`{"username":%q,"content":%q}`, m.name, m.content)
		if len(payload) > 125 {
			t.Fatal("test messages must fit a 2-byte frame header")
		}
		frameBytes += 2 + len(payload)
		// One at a time (order is only guaranteed per sender).
		m.from.send(fmt.Sprintf(`{"content":%q}`, m.content))
		for _, c := range []*client{alice, bob} {
			if got, want := c.read(), (chatMsg{m.name, m.content}); got != want {
				t.Fatalf("read %+v, want %+v", got, want)
			}
		}
	}
	promWait(t, hc, s.base, "three chat messages",
		promWant{name: mConnections, want: 2},
		promWant{name: mMembers, want: 2},
		promWant{name: mMessagesIn, want: m1.value(mMessagesIn) + 3},
		promWant{name: mBroadcasts, want: m1.value(mBroadcasts) + 3},
		promWant{name: mDeliveries, want: m1.value(mDeliveries) + 2*3},
		promWant{name: mBytesOut, want: m1.value(mBytesOut) + float64(2*frameBytes)},
		promWant{name: mJoins, want: m1.value(mJoins)},
		promWant{name: mLeaves, want: m1.value(mLeaves)},
	)
	m2 := promRoundsSettled(t, hc, s.base, "three chat messages")
	if m2.value(mRounds) <= m1.value(mRounds) || m2.value(mLatency) <= m1.value(mLatency) {
		t.Errorf("no broadcast round recorded for three messages: %s %v -> %v, %s count %v -> %v",
			mRounds, m1.value(mRounds), m2.value(mRounds), mLatency, m1.value(mLatency), m2.value(mLatency))
	}
	promCheckLatency(t, m2)

	// bob leaves (close 1000, echoed), then alice.
	bob.conn.Close(websocket.StatusNormalClosure, "bye")
	alice.waitFor(chatMsg{"System", "bob left the chat"})
	m3 := promWait(t, hc, s.base, "bob's leave",
		promWant{name: mConnections, want: 1},
		promWant{name: mMembers, want: 1},
		promWant{name: mLeaves, want: m2.value(mLeaves) + 1},
		promWant{name: mBroadcasts, want: m2.value(mBroadcasts) + 1},
		promWant{name: mDeliveries, want: m2.value(mDeliveries) + 1},
	)
	// gochat_disconnects_total counts "connections closed, by WebSocket
	// close code sent": the server sent bob 1000 (the echo of his close)
	// before it told alice he left.
	if got, want := m3.value(mDisconnects, "code", "1000"), m2.value(mDisconnects, "code", "1000")+1; got != want {
		t.Errorf(`%s{code="1000"} = %v after a client close echoed with 1000, want %v`, mDisconnects, got, want)
	}
	if m3.value(mBytesOut) <= m2.value(mBytesOut) {
		t.Errorf("%s did not grow with a close echo and a leave notice", mBytesOut)
	}
	alice.conn.Close(websocket.StatusNormalClosure, "bye")
	m4 := promWait(t, hc, s.base, "alice's leave",
		promWant{name: mConnections, want: 0},
		promWant{name: mMembers, want: 0},
		promWant{name: mLeaves, want: m3.value(mLeaves) + 1},
		promWant{name: mDeliveries, want: m3.value(mDeliveries)}, // nobody left to tell
	)

	// A bad join: an Error message, then close 1008 (a policy disconnect).
	bad := dial(t, s.url)
	bad.send(`{"content":"no username"}`)
	if got := bad.read(); got.Username != "System" || !strings.HasPrefix(got.Content, "Error: ") {
		t.Fatalf("bad join answered %+v, want a System Error: message", got)
	}
	bad.expectClose(websocket.StatusPolicyViolation)
	m5 := promWait(t, hc, s.base, "a bad join",
		promWant{name: mDisconnects, labels: []string{"code", "1008"}, want: m4.value(mDisconnects, "code", "1008") + 1},
		promWant{name: mJoinRejects, want: m4.value(mJoinRejects) + 1},
		promWant{name: mJoins, want: m4.value(mJoins)},
		promWant{name: mMessagesIn, want: m4.value(mMessagesIn) + 1},
		promWant{name: mConnections, want: 0},
		promWant{name: mMembers, want: 0},
		promWant{name: mSlowConsumers, want: 0},
	)
	// Families that only appear once something happened (the disconnects
	// vector) are held to the same rules.
	late := &promScrape{raw: m5.raw, fams: map[string]*dto.MetricFamily{}}
	for name, f := range m5.fams {
		if m0.fams[name] == nil {
			late.fams[name] = f
		}
	}
	promCheckExposition(t, late)
	if f := m5.fams[mDisconnects]; f == nil || f.GetType() != dto.MetricType_COUNTER {
		t.Errorf("%s missing or not a counter", mDisconnects)
	}
	if v := m5.value(mGoroutines); v < 1 {
		t.Errorf("%s = %v", mGoroutines, v)
	}
	if v := m5.value(mRSS); v <= 0 {
		t.Errorf("%s = %v", mRSS, v)
	}
}

// promRoundsSettled waits until every finished broadcast round has
// observed its latency (the histogram's count equals the rounds counter)
// and returns that scrape.
func promRoundsSettled(t testing.TB, hc *http.Client, base, what string) *promScrape {
	t.Helper()
	var last *promScrape
	waitUntil(t, "latency histogram to count every round after "+what, func() bool {
		s, err := promFetch(t, hc, base)
		if err != nil {
			return false
		}
		last = s
		return s.value(mLatency) == s.value(mRounds) && s.value(mRounds) > 0
	})
	return last
}

// promCheckLatency checks the histogram is cumulative and plausible.
func promCheckLatency(t *testing.T, s *promScrape) {
	t.Helper()
	h := s.histogram(mLatency)
	if h == nil {
		t.Errorf("%s: not one histogram", mLatency)
		return
	}
	if len(h.GetBucket()) < 5 {
		t.Errorf("%s: %d buckets", mLatency, len(h.GetBucket()))
	}
	prev, prevBound := uint64(0), 0.0
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() < prev || b.GetUpperBound() <= prevBound {
			t.Errorf("%s: buckets not cumulative/ascending at le=%v", mLatency, b.GetUpperBound())
		}
		prev, prevBound = b.GetCumulativeCount(), b.GetUpperBound()
	}
	if prev > h.GetSampleCount() {
		t.Errorf("%s: bucket count %d > sample count %d", mLatency, prev, h.GetSampleCount())
	}
	if h.GetSampleSum() < 0 || h.GetSampleSum() > 10*float64(h.GetSampleCount()) {
		t.Errorf("%s: sum %v for %d samples on loopback", mLatency, h.GetSampleSum(), h.GetSampleCount())
	}
}

// /metrics answers uncompressed even to a scraper that offers gzip (as
// Prometheus does): the encoder would keep about 1 MB resident for an
// answer of about 15 KB.
func TestMetricsServedUncompressed(t *testing.T) {
	s := startServer(t, Config{})
	req, err := http.NewRequest(http.MethodGet, s.base+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept-Encoding", "gzip, zstd")
	resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if enc := resp.Header.Get("Content-Encoding"); enc != "" || !strings.Contains(string(body), "gochat_connections") {
		t.Fatalf("Content-Encoding %q, body starts %q", enc, body[:min(len(body), 40)])
	}
}
