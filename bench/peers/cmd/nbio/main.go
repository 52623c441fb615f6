// Command nbio serves the gochat protocol with nbiochat, for the comparison.
package main

import (
	"gochat/bench/peers/internal/peermain"
	"gochat/bench/peers/nbiochat"
)

func main() { peermain.Run("nbio", nbiochat.Start) }
