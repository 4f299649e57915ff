package phidb_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

func testKeys(t testing.TB) *keys.Keyring {
	kr, err := keys.Generate()
	require.NoError(t, err)
	return kr
}

// connect opens a pool and pings it, so that connection errors show.
func connect(ctx context.Context, connString string, cfg phidb.Config) error {
	db, err := phidb.New(ctx, connString, cfg)
	if err != nil {
		return err
	}
	defer db.Close()
	return db.Ping(ctx)
}

// countingListener accepts TCP connections and counts them, to prove that a
// refused configuration never dials.
func countingListener(t *testing.T) (port int, accepted *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	accepted = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}

func TestPlaintextModesRefusedBeforeDial(t *testing.T) {
	ctx := context.Background()
	port, accepted := countingListener(t)
	for _, mode := range []string{"disable", "allow", "prefer"} {
		for _, cs := range []string{
			fmt.Sprintf("host=127.0.0.1 port=%d user=u password=pw-secret-1 dbname=d sslmode=%s", port, mode),
			fmt.Sprintf("postgres://u:pw-secret-1@127.0.0.1:%d/d?sslmode=%s", port, mode),
		} {
			t.Run(mode, func(t *testing.T) {
				_, err := phidb.New(ctx, cs, phidb.Config{Keys: testKeys(t)})
				require.ErrorIs(t, err, phidb.ErrInsecureConnection)
				require.Contains(t, err.Error(), "sslmode="+mode)
				require.Contains(t, err.Error(), "verify-full", "the message says what to change")
				noLeak(t, err, "pw-secret-1")
			})
		}
	}
	// PGSSLMODE from the environment is honoured, and refused too.
	t.Setenv("PGSSLMODE", "disable")
	_, err := phidb.New(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=u dbname=d", port), phidb.Config{Keys: testKeys(t)})
	require.ErrorIs(t, err, phidb.ErrInsecureConnection)
	require.Zero(t, accepted.Load(), "a refused configuration must not dial")
}

func TestSocketHostRefused(t *testing.T) {
	for _, cs := range []string{"host=/var/run/postgresql user=postgres dbname=test sslmode=verify-full", "host=/tmp dbname=x"} {
		_, err := phidb.New(context.Background(), cs, phidb.Config{Keys: testKeys(t)})
		require.ErrorIs(t, err, phidb.ErrInsecureConnection)
		require.ErrorContains(t, err, "unix socket")
	}
}

func TestServerWithoutSSLRefused(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{NoSSL: true})
	require.NoError(t, err)
	t.Cleanup(func() { c.Stop() })
	ctx := context.Background()
	cs := c.ConnString("postgres")
	// As configured for that server: refused before dialing.
	_, err = phidb.New(ctx, cs, phidb.Config{Keys: testKeys(t)})
	require.ErrorIs(t, err, phidb.ErrInsecureConnection)
	// Asking for TLS: the server cannot provide it, so nothing connects.
	tlsCS := strings.Replace(cs, "sslmode=disable", "sslmode=verify-full sslrootcert="+pgtest.Shared().CAFile(), 1)
	err = connect(ctx, tlsCS, phidb.Config{Keys: testKeys(t)})
	require.Error(t, err)
	require.Contains(t, err.Error(), "TLS")
	err = connect(ctx, strings.Replace(cs, "sslmode=disable", "sslmode=require", 1), phidb.Config{Keys: testKeys(t), InsecureAllowUnverifiedTLS: true})
	require.Error(t, err)
}

func TestVerifiedTLSConnects(t *testing.T) {
	ctx := context.Background()
	cs := pgtest.NewDatabase(t)
	db, err := phidb.New(ctx, cs, phidb.Config{Keys: testKeys(t)})
	require.NoError(t, err)
	defer db.Close()
	var ssl bool
	var version string
	require.NoError(t, db.QueryRow(ctx, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl, &version))
	require.True(t, ssl)
	require.Contains(t, []string{"TLSv1.2", "TLSv1.3"}, version)
	require.GreaterOrEqual(t, db.Config().ConnConfig.TLSConfig.MinVersion, uint16(0x0303))
}

func TestMissingSSLModeMeansVerifyFull(t *testing.T) {
	ctx := context.Background()
	cs := pgtest.NewDatabase(t)
	without := strings.Replace(cs, "sslmode=verify-full", "", 1)
	require.NoError(t, connect(ctx, without, phidb.Config{Keys: testKeys(t)}))
	// Verification really happens: an untrusted CA fails.
	other := writeOtherCA(t)
	bad := strings.Replace(without, "sslrootcert="+pgtest.Shared().CAFile(), "sslrootcert="+other, 1)
	require.NotEqual(t, without, bad)
	err := connect(ctx, bad, phidb.Config{Keys: testKeys(t)})
	require.Error(t, err)
	require.Contains(t, err.Error(), "certificate")

	pc, err := pgxpool.ParseConfig(cs)
	require.NoError(t, err)
	db, err := phidb.NewWithConfig(ctx, pc, phidb.Config{Keys: testKeys(t)})
	require.NoError(t, err)
	require.NoError(t, db.Ping(ctx))
	db.Close()
}

func TestUntrustedCAFails(t *testing.T) {
	cs := pgtest.NewDatabase(t)
	bad := strings.Replace(cs, pgtest.Shared().CAFile(), writeOtherCA(t), 1)
	err := connect(context.Background(), bad, phidb.Config{Keys: testKeys(t)})
	require.Error(t, err)
	require.Contains(t, err.Error(), "certificate signed by unknown authority")
}

func TestCertificateForAnotherHostFails(t *testing.T) {
	c, err := pgtest.Start(pgtest.Options{CertHosts: []string{"db.other.example"}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Stop() })
	err = connect(context.Background(), c.ConnString("postgres"), phidb.Config{Keys: testKeys(t)})
	require.Error(t, err)
	require.Contains(t, err.Error(), "x509")

	// verify-ca checks the chain but not the name: accepted.
	verifyCA := strings.Replace(c.ConnString("postgres"), "sslmode=verify-full", "sslmode=verify-ca", 1)
	require.NoError(t, connect(context.Background(), verifyCA, phidb.Config{Keys: testKeys(t)}))
}

func TestUnverifiedTLSNeedsExplicitOptIn(t *testing.T) {
	ctx := context.Background()
	cs := pgtest.NewDatabase(t)
	require.Contains(t, cs, "sslmode=verify-full")
	req := strings.Replace(strings.Replace(cs, "sslmode=verify-full", "sslmode=require", 1), "sslrootcert="+pgtest.Shared().CAFile(), "", 1)
	_, err := phidb.New(ctx, req, phidb.Config{Keys: testKeys(t)})
	require.ErrorIs(t, err, phidb.ErrInsecureConnection)
	require.ErrorContains(t, err, "InsecureAllowUnverifiedTLS")
	require.NoError(t, connect(ctx, req, phidb.Config{Keys: testKeys(t), InsecureAllowUnverifiedTLS: true}))
}

// A user's AfterNetConnect still runs, after phidb's check, on the TLS conn.
func TestUserAfterNetConnectChained(t *testing.T) {
	ctx := context.Background()
	pc, err := pgxpool.ParseConfig(pgtest.NewDatabase(t))
	require.NoError(t, err)
	var calls atomic.Int64
	pc.ConnConfig.AfterNetConnect = func(ctx context.Context, cfg *pgconn.Config, conn net.Conn) (net.Conn, error) {
		calls.Add(1)
		return conn, nil
	}
	db, err := phidb.NewWithConfig(ctx, pc, phidb.Config{Keys: testKeys(t)})
	require.NoError(t, err)
	defer db.Close()
	require.NoError(t, db.Ping(ctx))
	require.EqualValues(t, 1, calls.Load())
}

// writeOtherCA writes a CA certificate that signed nothing the server has.
func writeOtherCA(t *testing.T) string {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "untrusted CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "other-ca.pem")
	require.NoError(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	return path
}
