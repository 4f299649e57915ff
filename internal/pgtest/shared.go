package pgtest

import (
	"fmt"
	"os"
	"sync/atomic"
	"testing"
)

var shared atomic.Pointer[Cluster]

// Main runs a package's tests with a shared TLS cluster; call it from
// TestMain:
//
//	func TestMain(m *testing.M) {
//		pgtest.Main(m)
//	}
//
// Main starts the cluster, runs the tests, stops the cluster and exits with
// the tests' exit code. If the cluster cannot start, or cannot be stopped
// cleanly, Main reports why on stderr and exits with code 1: tests that
// need PostgreSQL never pass by being skipped.
func Main(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) (code int) {
	c, err := Start(Options{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start the shared PostgreSQL cluster: %v\n", err)
		return 1
	}
	shared.Store(c)
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stopping the shared PostgreSQL cluster: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}()
	return m.Run()
}

// Shared returns the cluster started by [Main]. It panics if the test
// binary does not use Main.
func Shared() *Cluster {
	c := shared.Load()
	if c == nil {
		panic("pgtest: no shared cluster: call pgtest.Main(m) from the package's TestMain")
	}
	return c
}

// NewDatabase is Shared().NewDatabase(t): it creates a fresh database in the
// shared cluster, dropped when the test ends, and returns its connection
// string.
func NewDatabase(t testing.TB) string {
	t.Helper()
	return Shared().NewDatabase(t)
}
