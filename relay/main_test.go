package relay_test

import (
	"flag"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	flag.Parse()
	// -short runs the unit tests alone, without services: tests that need
	// services skip (testenv.Services), and the examples, which cannot
	// skip, are left out unless -run names them.
	if testing.Short() && flag.Lookup("test.run").Value.String() == "" {
		_ = flag.Set("test.run", "^Test")
	}
	goleak.VerifyTestMain(m)
}
