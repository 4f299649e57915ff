package phidb_test

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newPool opens a phidb pool on a fresh database with a fresh keyring and
// runs the given DDL.
func newPool(t testing.TB, ddl ...string) (*phidb.Pool, string) {
	t.Helper()
	kr, err := keys.Generate()
	require.NoError(t, err)
	return newPoolWithKeys(t, kr, ddl...)
}

func newPoolWithKeys(t testing.TB, kr *keys.Keyring, ddl ...string) (*phidb.Pool, string) {
	t.Helper()
	cs := pgtest.NewDatabase(t)
	db, err := phidb.New(context.Background(), cs, phidb.Config{Keys: kr, SystemActor: &auditing.Actor{ID: "phidb-tests", Role: "system"}})
	require.NoError(t, err)
	t.Cleanup(db.Close)
	for _, q := range ddl {
		_, err := db.Exec(context.Background(), q)
		require.NoError(t, err, q)
	}
	return db, cs
}

// noLeak fails the test if err's message contains any of the secrets.
func noLeak(t testing.TB, err error, secrets ...string) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range secrets {
		if s != "" && strings.Contains(msg, s) {
			t.Fatalf("error message leaks a test value %q: %s", s, msg)
		}
	}
}
