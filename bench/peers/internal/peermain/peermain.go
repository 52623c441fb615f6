// Package peermain is the shared main of the comparison peers: flags,
// start, wait for SIGINT/SIGTERM.
package peermain

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// Run parses -addr and -presence, starts the server and blocks until a
// signal arrives.
func Run(name string, start func(addr string, presence bool) (func(), error)) {
	addr := flag.String("addr", "127.0.0.1:8080", "listen address (serves /ws and /healthz)")
	presence := flag.Bool("presence", true, "join/leave notices")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [-addr HOST:PORT] [-presence=false]\n\n"+
			"The gochat protocol (SPEC §2) on %s, a comparison peer for bench/compare.sh.\n\n", os.Args[0], name)
		flag.PrintDefaults()
	}
	flag.Parse()
	stop, err := start(*addr, *presence)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", os.Args[0], err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	stop()
}
