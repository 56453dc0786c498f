//go:build race

package testenv

// raceEnabled: the test binary runs with the race detector, and so does
// the relay binary it builds.
const raceEnabled = true
