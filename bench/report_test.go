package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var updateGolden = flag.Bool("update", false, "rewrite bench/testdata/table-*.txt from the current writeTable")

// TestWriteTableGolden renders copies of the tracked results (every scenario, and a
// soak with its time series) and a slow run, and compares them with
// testdata, so that refactoring writeTable cannot change what it prints.
func TestWriteTableGolden(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.json") // copies of bench/results, which perf.sh -w rewrites
	if len(files) == 0 {
		t.Fatal("no testdata/*.json")
	}
	var inputs []struct {
		name string
		res  Result
	}
	for _, f := range files {
		var r Result
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &r); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, struct {
			name string
			res  Result
		}{strings.TrimSuffix(filepath.Base(f), ".json"), r})
	}
	slow := Result{Scenario: "slow", URL: "ws://127.0.0.1:1/ws", Conns: 10, Connected: 9, ConnectFailed: 1,
		ConnectErrors: map[string]int{"dial: connect: connection refused": 1}, Unconfirmed: 1, Sent: 10, Senders: 2,
		Receivers: 7, Deliveries: 60, Expected: 70, Lost: 10, OutOfOrder: 1, ServerErrors: 2, Unparsed: 3,
		Disconnected: 2, DisconnectCodes: map[string]int{"1008": 2}, DisconnectWhy: map[string]int{"read: EOF": 1},
		SlowClients: ptr(2), SlowDisconnected: ptr(2), SlowCodes: map[string]int{"1008": 2},
		SlowWhy: map[string]int{"reset": 2}, SlowBacklog: ptr(uint64(5)), RSSPerConnBytes: ptr(-3.0), RSSBeforeBytes: ptr(uint64(1 << 20))}
	inputs = append(inputs, struct {
		name string
		res  Result
	}{"synthetic-slow", slow})
	for _, in := range inputs {
		var out bytes.Buffer
		if err := writeTable(&out, &in.res); err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", "table-"+in.name+".txt")
		if *updateGolden {
			os.MkdirAll("testdata", 0o755)
			if err := os.WriteFile(golden, out.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test ./bench/ -run WriteTableGolden -update)", err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("%s: writeTable output changed:\n--- got\n%s\n--- want\n%s", in.name, out.Bytes(), want)
		}
	}
}
