// Package pgtest starts throwaway PostgreSQL clusters for tests and examples.
//
// A cluster lives in a fresh folder under os.TempDir() (named
// "phidb-pgtest-*"), listens only on 127.0.0.1 at a free port, and by
// default accepts nothing but TLS connections: it gets its own certificate
// authority, and [Cluster.ConnString] returns connection strings with
// sslmode=verify-full and sslrootcert pointing at [Cluster.CAFile]. The
// superuser is "postgres" with a random password (SCRAM-SHA-256).
// Durability is switched off (fsync, synchronous_commit, full_page_writes)
// to keep tests fast.
//
// Most packages share one cluster per test binary and give each test its
// own database:
//
//	func TestMain(m *testing.M) {
//		pgtest.Main(m)
//	}
//
//	func TestSomething(t *testing.T) {
//		connString := pgtest.NewDatabase(t) // dropped when the test ends
//		conn, err := pgx.Connect(t.Context(), connString)
//		...
//	}
//
// Tests that need a cluster with other settings, for example one without
// TLS to check that it is refused, start their own:
//
//	c, err := pgtest.Start(pgtest.Options{NoSSL: true})
//	require.NoError(t, err)
//	t.Cleanup(func() { require.NoError(t, c.Stop()) })
//
// The PostgreSQL server binaries (initdb and postgres) must be installed:
// they are looked up on PATH, then in /usr/lib/postgresql/*/bin (Debian and
// Ubuntu: apt-get install postgresql). PostgreSQL refuses to run as root, so
// when the tests run as root the server runs as the "postgres" system user.
//
// The server is a direct child of the test process and, on Linux, is killed
// by the kernel if the test process dies. Folders left behind by test
// processes that died are removed by the next call to [Start].
package pgtest
