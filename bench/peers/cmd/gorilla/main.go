// Command gorilla serves the gochat protocol with gorillachat (goroutine-per-connection hub), for the comparison.
package main

import (
	"gochat/bench/peers/gorillachat"
	"gochat/bench/peers/internal/peermain"
)

func main() { peermain.Run("gorilla", gorillachat.Start) }
