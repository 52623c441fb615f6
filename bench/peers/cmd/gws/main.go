// Command gws serves the gochat protocol with gwschat, for the comparison.
package main

import (
	"gochat/bench/peers/gwschat"
	"gochat/bench/peers/internal/peermain"
)

func main() { peermain.Run("gws", gwschat.Start) }
