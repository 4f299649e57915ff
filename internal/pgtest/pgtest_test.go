package pgtest

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
)

// helperEnv makes the test binary run helperProcess instead of the tests.
const helperEnv = "PGTEST_HELPER_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helperProcess()
		return
	}
	Main(m)
}

// helperProcess starts a cluster, prints its folder and server PID, and
// waits to be killed.
func helperProcess() {
	c, err := Start(Options{NoSSL: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(c.dir, c.cmd.Process.Pid)
	time.Sleep(time.Minute)
	os.Exit(2)
}

func connect(t *testing.T, connString string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), connString)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

func TestSharedClusterRequiresVerifiedTLS(t *testing.T) {
	t.Parallel()
	c := Shared()
	require.Equal(t, "127.0.0.1", c.Host())
	require.FileExists(t, c.CAFile())
	base := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres", c.Port(), c.password)
	require.Equal(t, base+" sslmode=verify-full sslrootcert="+c.CAFile(), c.ConnString("postgres"))

	conn := connect(t, c.ConnString("postgres"))
	var ssl bool
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl))
	require.True(t, ssl)

	_, err := pgx.Connect(t.Context(), base+" sslmode=disable")
	require.ErrorContains(t, err, "pg_hba.conf", "a non-TLS connection must be refused")

	_, err = pgx.Connect(t.Context(), base+" sslmode=verify-full sslrootcert=system")
	require.ErrorContains(t, err, "certificate", "the cluster's CA must not be trusted by the system")
}

func TestNoSSLCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c, err := Start(Options{NoSSL: true})
	require.NoError(t, err)
	t.Logf("started in %v", time.Since(start))
	t.Cleanup(func() { require.NoError(t, c.Stop()) })

	require.Empty(t, c.CAFile())
	require.Equal(t, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=disable", c.Port(), c.password), c.ConnString("postgres"))
	conn := connect(t, c.ConnString("postgres"))
	var ssl bool
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl))
	require.False(t, ssl)

	_, err = pgx.Connect(t.Context(), strings.Replace(c.ConnString("postgres"), "sslmode=disable", "sslmode=require", 1))
	require.Error(t, err, "the server must not offer TLS")
}

func TestCertHosts(t *testing.T) {
	t.Parallel()
	c, err := Start(Options{CertHosts: []string{"db.other.example"}})
	require.NoError(t, err, "startup must not depend on the certificate's hosts")
	t.Cleanup(func() { require.NoError(t, c.Stop()) })

	_, err = pgx.Connect(t.Context(), c.ConnString("postgres"))
	require.ErrorContains(t, err, "doesn't contain any IP SANs")
	connect(t, strings.Replace(c.ConnString("postgres"), "sslmode=verify-full", "sslmode=verify-ca", 1))
}

func TestStopLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	c, err := Start(Options{})
	require.NoError(t, err)
	dir, pid := c.dir, c.cmd.Process.Pid
	conn := connect(t, c.ConnString("postgres"))
	var backendPID int
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT pg_backend_pid()").Scan(&backendPID))
	require.NotEmpty(t, processesIn(t, dir))

	start := time.Now()
	require.NoError(t, c.Stop())
	t.Logf("stopped in %v", time.Since(start))
	require.NoDirExists(t, dir)
	require.True(t, processGone(pid), "postmaster %d still running", pid)
	require.True(t, processGone(backendPID), "backend %d still running", backendPID)
	require.Empty(t, processesIn(t, dir))
	require.NoError(t, c.Stop(), "Stop must be idempotent")
}

// TestKilledOwner checks that the server dies with a test process that is
// killed, and that the next Start removes the folder left behind.
func TestKilledOwner(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	require.NoError(t, err)
	var dir string
	var pid int
	_, err = fmt.Sscan(line, &dir, &pid)
	require.NoError(t, err)
	require.DirExists(t, dir)
	require.False(t, isStale(dir))

	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()
	require.Eventually(t, func() bool { return processGone(pid) && len(processesIn(t, dir)) == 0 },
		10*time.Second, 20*time.Millisecond, "the server outlived its owner")

	require.True(t, isStale(dir))
	removeStaleFolders()
	require.NoDirExists(t, dir)
	require.False(t, isStale(Shared().dir), "a running cluster is not stale")
	require.DirExists(t, Shared().dir)
}

func TestNewDatabaseIsolated(t *testing.T) {
	t.Parallel()
	a := connect(t, NewDatabase(t))
	b := connect(t, NewDatabase(t))

	var nameA, nameB string
	require.NoError(t, a.QueryRow(t.Context(), "SELECT current_database()").Scan(&nameA))
	require.NoError(t, b.QueryRow(t.Context(), "SELECT current_database()").Scan(&nameB))
	require.NotEqual(t, nameA, nameB)
	require.Regexp(t, `^t_testnewdatabaseisolated_[a-z0-9]{8}$`, nameA)

	_, err := a.Exec(t.Context(), "CREATE TABLE items (id int)")
	require.NoError(t, err)
	var exists bool
	require.NoError(t, b.QueryRow(t.Context(), "SELECT to_regclass('items') IS NOT NULL").Scan(&exists))
	require.False(t, exists)
}

func TestNewDatabaseDroppedAfterTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("sub", func(t *testing.T) {
		conn := connect(t, NewDatabase(t)) // left open: the drop ends it
		require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&name))
	})
	require.NotEmpty(t, name)
	admin := connect(t, Shared().ConnString("postgres"))
	var exists bool
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists))
	require.False(t, exists)
}

func TestCreateDatabase(t *testing.T) {
	t.Parallel()
	c := Shared()
	name := `it's a \ "test"`
	connString, err := c.CreateDatabase(t.Context(), name)
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, c.exec(context.Background(), "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"))
	})
	conn := connect(t, connString)
	var got string
	require.NoError(t, conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&got))
	require.Equal(t, name, got)

	_, err = c.CreateDatabase(t.Context(), name)
	require.ErrorContains(t, err, "already exists")
	for _, bad := range []string{"", strings.Repeat("x", 64)} {
		_, err = c.CreateDatabase(t.Context(), bad)
		require.ErrorContains(t, err, "invalid database name")
	}
}

func TestDatabaseName(t *testing.T) {
	valid := regexp.MustCompile(`^t_([a-z0-9]+_)*[a-z0-9]{8}$`)
	for testName, prefix := range map[string]string{
		"TestFoo":                     "t_testfoo_",
		"TestFoo/Sub_case#01":         "t_testfoo_sub_case_01_",
		"Test/ÄÖ--x":                  "t_test_x_",
		"/#":                          "t_",
		strings.Repeat("Abc/", 30):    "t_abc_abc_abc_abc_abc_abc_abc_abc_abc_abc_",
		strings.Repeat("a", 39) + "/": "t_" + strings.Repeat("a", 39) + "_",
	} {
		name := databaseName(testName)
		require.True(t, strings.HasPrefix(name, prefix), "%q -> %q", testName, name)
		require.Regexp(t, valid, name)
		require.LessOrEqual(t, len(name), 51)
	}
	require.NotEqual(t, databaseName("TestFoo"), databaseName("TestFoo"))
}

func TestQuoteValue(t *testing.T) {
	require.Equal(t, "db", quoteValue("db"))
	require.Equal(t, "''", quoteValue(""))
	require.Equal(t, `'a b\'c\\d'`, quoteValue(`a b'c\d`))
}

func TestCertificates(t *testing.T) {
	certs, err := newCertificates([]string{"localhost", "127.0.0.1", "::1", "db.example"})
	require.NoError(t, err)
	parse := func(data []byte, typ string) []byte {
		block, rest := pem.Decode(data)
		require.NotNil(t, block)
		require.Equal(t, typ, block.Type)
		require.Empty(t, rest)
		return block.Bytes
	}
	ca, err := x509.ParseCertificate(parse(certs.caCert, "CERTIFICATE"))
	require.NoError(t, err)
	require.True(t, ca.IsCA)
	server, err := x509.ParseCertificate(parse(certs.serverCert, "CERTIFICATE"))
	require.NoError(t, err)
	_, err = x509.ParsePKCS8PrivateKey(parse(certs.serverKey, "PRIVATE KEY"))
	require.NoError(t, err)

	require.Equal(t, []string{"localhost", "db.example"}, server.DNSNames)
	require.True(t, server.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")))
	require.True(t, server.IPAddresses[1].Equal(net.ParseIP("::1")))
	require.True(t, server.NotBefore.Before(time.Now().Add(-time.Hour)))
	require.True(t, server.NotAfter.After(time.Now().AddDate(0, 11, 0)))

	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range []string{"localhost", "127.0.0.1", "::1", "db.example"} {
		_, err := server.Verify(x509.VerifyOptions{DNSName: name, Roots: roots})
		require.NoError(t, err, name)
	}
	_, err = server.Verify(x509.VerifyOptions{DNSName: "other.example", Roots: roots})
	require.Error(t, err)

	_, err = newCertificates(nil)
	require.Error(t, err)
}

func TestFindBinaries(t *testing.T) {
	bins, err := findBinaries()
	require.NoError(t, err)
	require.True(t, isExecutable(bins.initdb), bins.initdb)
	require.True(t, isExecutable(bins.postgres), bins.postgres)
	require.Equal(t, []int{9, 6}, parseVersion("9.6"))
	require.Equal(t, []int{-1}, parseVersion("x"))
}

func TestSharedPanicsWithoutMain(t *testing.T) {
	c := shared.Swap(nil)
	defer shared.Store(c)
	require.PanicsWithValue(t, "pgtest: no shared cluster: call pgtest.Main(m) from the package's TestMain", func() { Shared() })
}

// processGone reports whether process pid has exited (zombies included).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == syscall.ESRCH
	}
	// The state follows the command name, which is in parentheses.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(fields) > 0 && fields[0] == "Z"
}

// processesIn returns the PIDs of processes whose working directory is in
// dir: the server and all its children run in the data directory.
func processesIn(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Skip("no /proc:", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err == nil && (cwd == dir || strings.HasPrefix(cwd, dir+"/")) {
			pids = append(pids, pid)
		}
	}
	return pids
}
