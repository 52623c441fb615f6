//go:build !race

package e2e

// raceEnabled reports whether the test binary runs under the race detector,
// which slows every goroutine of the test several times over. Tight
// wall-clock bounds (strictTiming) are only checked without it.
const raceEnabled = false
