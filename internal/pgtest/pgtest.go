package pgtest

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	host         = "127.0.0.1"
	superuser    = "postgres"
	folderPrefix = "phidb-pgtest-"
	ownerFile    = "owner.pid" // PID of the process that owns a cluster folder
	logFileName  = "server.log"
	caFileName   = "ca.crt"

	startAttempts = 5                // a free port can be taken before the server binds it
	startTimeout  = 30 * time.Second // until the server accepts connections
	stopTimeout   = 30 * time.Second // for a fast shutdown, before SIGKILL
	opTimeout     = 30 * time.Second // for CREATE and DROP DATABASE in NewDatabase

	maxIdentifierLen = 63 // PostgreSQL's NAMEDATALEN - 1
	staleNoOwnerAge  = 10 * time.Minute
)

// serverSettings are appended to postgresql.conf. They trade durability for
// speed. The port is given on the command line.
const serverSettings = `
# Added by phidb internal/pgtest.
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
fsync = off
synchronous_commit = off
full_page_writes = off
`

// Options configures a cluster started by [Start]. The zero value is a
// cluster that accepts only TLS connections.
type Options struct {
	// NoSSL starts the server with ssl=off, accepting only non-TLS
	// connections. It is meant for tests that check that such a server is
	// refused.
	NoSSL bool

	// CertHosts are the host names and IP addresses the server certificate
	// is valid for. The default is {"localhost", "127.0.0.1"}.
	// [Cluster.ConnString] connects to 127.0.0.1 with sslmode=verify-full,
	// so it works only if CertHosts contains 127.0.0.1; other values are
	// for tests of host name verification. Start itself checks only that
	// the certificate chains to the cluster's CA.
	CertHosts []string
}

// Cluster is a running throwaway PostgreSQL server started by [Start].
// Its methods are safe for concurrent use.
type Cluster struct {
	dir      string              // the cluster's temporary folder
	dataDir  string              // dir/data
	caFile   string              // dir/ca.crt; empty without TLS
	ssl      bool                // the server accepts only TLS connections
	password string              // of the postgres superuser
	cred     *syscall.Credential // user to run the server as; nil: the current user
	port     int

	cmd     *exec.Cmd     // the postmaster; nil until started
	exited  chan struct{} // closed once cmd has exited
	waitErr error         // cmd.Wait's result; read only after exited is closed

	stopped  atomic.Bool
	stopOnce sync.Once
	stopErr  error
}

// Start creates and starts a new PostgreSQL cluster in a fresh temporary
// folder. Call [Cluster.Stop] to shut it down and remove the folder.
//
// Start also removes "phidb-pgtest-*" folders left in os.TempDir() by
// earlier test processes that are no longer running.
func Start(opts Options) (*Cluster, error) {
	bins, err := findBinaries()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	removeStaleFolders()

	dir, err := os.MkdirTemp("", folderPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{
		dir:      dir,
		dataDir:  filepath.Join(dir, "data"),
		ssl:      !opts.NoSSL,
		password: rand.Text(),
		cred:     cred,
	}
	if err := c.setUp(bins, opts); err != nil {
		return nil, errors.Join(fmt.Errorf("pgtest: %w", err), c.Stop())
	}
	return c, nil
}

func (c *Cluster) setUp(bins binaries, opts Options) error {
	if err := os.WriteFile(filepath.Join(c.dir, ownerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	if err := c.chown(c.dir); err != nil {
		return err
	}
	if err := c.initdb(bins.initdb); err != nil {
		return err
	}
	if err := c.configure(opts); err != nil {
		return err
	}
	return c.start(bins.postgres)
}

// initdb creates the data directory with a postgres superuser that logs in
// with c.password.
func (c *Cluster) initdb(initdb string) error {
	pwfile := filepath.Join(c.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(c.password+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(pwfile)
	if err := c.chown(pwfile); err != nil {
		return err
	}
	run := func(locale string) ([]byte, error) {
		return c.command(initdb, "-D", c.dataDir, "-U", superuser, "--pwfile="+pwfile,
			"--auth=scram-sha-256", "-E", "UTF8", "--locale="+locale, "--no-sync").CombinedOutput()
	}
	out, err := run("C.UTF-8")
	if err != nil && strings.Contains(string(out), "invalid locale") {
		// C.UTF-8 is missing on some systems; C collates the same way.
		if err := os.RemoveAll(c.dataDir); err != nil {
			return err
		}
		out, err = run("C")
	}
	if err != nil {
		return fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return nil
}

// configure writes the server settings, pg_hba.conf and the TLS files.
func (c *Cluster) configure(opts Options) error {
	settings := serverSettings
	hba := "host all all 127.0.0.1/32 scram-sha-256\n"
	if !c.ssl {
		settings += "ssl = off\n"
	} else {
		hosts := opts.CertHosts
		if len(hosts) == 0 {
			hosts = []string{"localhost", host}
		}
		certs, err := newCertificates(hosts)
		if err != nil {
			return err
		}
		c.caFile = filepath.Join(c.dir, caFileName)
		if err := os.WriteFile(c.caFile, certs.caCert, 0o644); err != nil {
			return err
		}
		for name, data := range map[string][]byte{"server.crt": certs.serverCert, "server.key": certs.serverKey} {
			path := filepath.Join(c.dataDir, name)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				return err
			}
			if err := c.chown(path); err != nil {
				return err
			}
		}
		// Relative paths are relative to the data directory.
		settings += "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_min_protocol_version = 'TLSv1.2'\n"
		hba = "hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 127.0.0.1/32 reject\n"
	}

	// Both files exist (created by initdb, owned by the server user): keep
	// them, and their owner, and change their content.
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(settings); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(c.dataDir, "pg_hba.conf"), []byte(hba), 0o600)
}

// errPortInUse reports that the server could not bind its port.
var errPortInUse = errors.New("port already in use")

// start starts the server on a free port, retrying on a port clash, and
// waits until it accepts connections.
func (c *Cluster) start(postgres string) error {
	var err error
	for range startAttempts {
		if c.port, err = freePort(); err != nil {
			return err
		}
		if err = c.startOnce(postgres); !errors.Is(err, errPortInUse) {
			return err
		}
	}
	return err
}

func (c *Cluster) startOnce(postgres string) error {
	logFile, err := os.OpenFile(filepath.Join(c.dir, logFileName), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := c.command(postgres, "-D", c.dataDir, "-p", strconv.Itoa(c.port))
	cmd.Stdout, cmd.Stderr = logFile, logFile
	exited := make(chan struct{})
	started := make(chan error, 1)
	go func() {
		// The parent-death signal fires when the thread that started the
		// child exits, not only when the process does, and Go ends a
		// thread when a goroutine locked to it returns. Keep the starting
		// thread to this goroutine until the server has exited.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.waitErr = cmd.Wait()
		close(exited)
	}()
	err = <-started
	logFile.Close() // the server has its own copy
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	c.cmd, c.exited = cmd, exited

	if err := c.waitReady(); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		c.cmd = nil
		log := c.logTail()
		if strings.Contains(log, "Address already in use") {
			return fmt.Errorf("%w: %d", errPortInUse, c.port)
		}
		return fmt.Errorf("%w\nserver log (last lines):\n%s", err, log)
	}
	return nil
}

// waitReady waits until the server accepts an authenticated connection
// (over TLS, verifying the certificate chain, for a TLS cluster).
func (c *Cluster) waitReady() error {
	// verify-ca rather than verify-full: CertHosts may lack 127.0.0.1.
	connString := c.connString("postgres", "verify-ca")
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		go func() {
			// If the server exits (say, the port was taken), the attempt
			// may hang on whoever else listens on the port.
			select {
			case <-c.exited:
				cancel()
			case <-ctx.Done():
			}
		}()
		conn, err := pgx.Connect(ctx, connString)
		if err == nil {
			err = conn.Close(ctx)
			cancel()
			return err
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within %s: %w", startTimeout, err)
		}
		select {
		case <-c.exited:
			return fmt.Errorf("postgres exited during startup: %v", c.waitErr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop shuts the server down (fast shutdown: open sessions are ended),
// waits for it to exit, killing it if it takes longer than 30 seconds, and
// removes the cluster's folder. Stop is idempotent: later calls return the
// first call's result.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() { c.stopErr = c.stop() })
	return c.stopErr
}

func (c *Cluster) stop() error {
	c.stopped.Store(true)
	var errs []error
	if c.cmd != nil {
		select {
		case <-c.exited:
			errs = append(errs, fmt.Errorf("postgres had exited unexpectedly (%v); server log (last lines):\n%s", c.waitErr, c.logTail()))
		default:
			errs = append(errs, c.shutdown())
		}
	}
	errs = append(errs, removeAll(c.dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pgtest: stop: %w", err)
	}
	return nil
}

func (c *Cluster) shutdown() error {
	_ = c.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-c.exited:
		if c.waitErr != nil {
			return fmt.Errorf("postgres: %w", c.waitErr)
		}
		return nil
	case <-time.After(stopTimeout):
	}
	_ = c.cmd.Process.Kill()
	<-c.exited
	return fmt.Errorf("postgres did not shut down within %s and was killed", stopTimeout)
}

// removeAll removes dir, retrying briefly: after a killed server, its
// backends may still be writing files in it for a moment.
func removeAll(dir string) error {
	var err error
	for range 10 {
		if err = os.RemoveAll(dir); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Port returns the TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// Host returns the address the server listens on: "127.0.0.1".
func (c *Cluster) Host() string { return host }

// CAFile returns the path of a PEM file holding the certificate of the
// cluster's own certificate authority, which signed the server
// certificate; use it as sslrootcert. It is empty for a cluster started
// with NoSSL.
func (c *Cluster) CAFile() string { return c.caFile }

// ConnString returns a keyword/value connection string for database dbname
// as the postgres superuser, for example
//
//	host=127.0.0.1 port=34567 user=postgres password=... dbname=app sslmode=verify-full sslrootcert=/tmp/phidb-pgtest-123/ca.crt
//
// For a cluster started with NoSSL it has sslmode=disable and no
// sslrootcert.
func (c *Cluster) ConnString(dbname string) string {
	return c.connString(dbname, "verify-full")
}

func (c *Cluster) connString(dbname, sslmode string) string {
	s := fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s", host, c.port, superuser, c.password, quoteValue(dbname))
	if !c.ssl {
		return s + " sslmode=disable"
	}
	return s + " sslmode=" + sslmode + " sslrootcert=" + quoteValue(c.caFile)
}

// quoteValue quotes a connection string value if needed.
func quoteValue(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n\r\v\f'\\") {
		return s
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// CreateDatabase creates database name (from template0) and returns its
// connection string, as [Cluster.ConnString].
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (connString string, err error) {
	if name == "" || len(name) > maxIdentifierLen || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("pgtest: invalid database name %q: want 1 to %d bytes, no NUL", name, maxIdentifierLen)
	}
	if err := c.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" TEMPLATE template0"); err != nil {
		return "", fmt.Errorf("pgtest: create database %q: %w", name, err)
	}
	return c.ConnString(name), nil
}

// NewDatabase creates a database with a fresh name derived from the test's
// name and returns its connection string. The database is dropped, ending
// any open sessions, when the test and its subtests end. NewDatabase calls
// t.Fatal if the database cannot be created.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	name := databaseName(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	connString, err := c.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.stopped.Load() {
			return // the database went with the cluster
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		if err := c.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database %q: %v", name, err)
		}
	})
	return connString
}

// databaseName returns "t_", testName in lower case with runs of other
// characters than ASCII letters and digits replaced by "_" and truncated,
// then "_" and a random suffix: at most 51 bytes.
func databaseName(testName string) string {
	const maxBase = 40
	var b strings.Builder
	pendingUnderscore := false
	for _, r := range strings.ToLower(testName) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			if pendingUnderscore && b.Len() > 0 {
				b.WriteByte('_')
			}
			pendingUnderscore = false
			b.WriteRune(r)
		} else {
			pendingUnderscore = true
		}
	}
	base := b.String()
	if len(base) > maxBase {
		base = strings.TrimRight(base[:maxBase], "_")
	}
	suffix := strings.ToLower(rand.Text()[:8])
	if base == "" {
		return "t_" + suffix
	}
	return "t_" + base + "_" + suffix
}

// exec runs sql as the superuser in database postgres.
func (c *Cluster) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, c.ConnString("postgres"))
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, sql)
	return errors.Join(err, conn.Close(ctx))
}

// command returns a command that runs as the server user, in the cluster's
// folder, without the PG* variables of the environment, and (on Linux) is
// killed if this process dies.
func (c *Cluster) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	cmd.Dir = c.dir
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	// Own process group: a Ctrl-C meant for the test process does not
	// reach the server; the server is stopped by Stop or dies with the
	// test process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Setpgid: true}
	setParentDeathSignal(cmd.SysProcAttr)
	return cmd
}

// chown gives path to the server user, if the server runs as another user.
func (c *Cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	return os.Chown(path, int(c.cred.Uid), int(c.cred.Gid))
}

// logTail returns the last lines of the server log.
func (c *Cluster) logTail() string {
	const maxLines = 30
	b, err := os.ReadFile(filepath.Join(c.dir, logFileName))
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}

// serverCredential returns the user to run the server as: nil (the current
// user) unless running as root, which PostgreSQL refuses; then the postgres
// system user.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, which PostgreSQL refuses, and there is no %q system user to run the server as (%w); create it (useradd --system postgres) or run the tests as another user", "postgres", err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("pgtest: user postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

type binaries struct{ initdb, postgres string }

// findBinaries finds initdb and postgres on PATH, else in the highest
// version folder of /usr/lib/postgresql/*/bin.
func findBinaries() (binaries, error) {
	if initdb, err := exec.LookPath("initdb"); err == nil {
		if postgres, err := exec.LookPath("postgres"); err == nil {
			return binaries{initdb, postgres}, nil
		}
	}
	var best binaries
	var bestVersion []int
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for _, dir := range dirs {
		b := binaries{filepath.Join(dir, "initdb"), filepath.Join(dir, "postgres")}
		if !isExecutable(b.initdb) || !isExecutable(b.postgres) {
			continue
		}
		v := parseVersion(filepath.Base(filepath.Dir(dir)))
		if best.initdb == "" || slices.Compare(v, bestVersion) > 0 {
			best, bestVersion = b, v
		}
	}
	if best.initdb == "" {
		return binaries{}, errors.New("pgtest: PostgreSQL server binaries (initdb and postgres) are missing: neither is on PATH nor in /usr/lib/postgresql/*/bin; install them (Debian, Ubuntu: apt-get install postgresql) or add their folder to PATH")
	}
	return best, nil
}

func isExecutable(path string) bool {
	info, err := os.Stat(path)
	return err == nil && info.Mode().IsRegular() && info.Mode()&0o111 != 0
}

// parseVersion parses "15" or "9.6"; parts that are not numbers are -1.
func parseVersion(s string) []int {
	var v []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil {
			n = -1
		}
		v = append(v, n)
	}
	return v
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeStaleFolders removes cluster folders in os.TempDir() whose owner
// process is gone. Errors are ignored: another user's folders, or folders
// removed concurrently, are not this process's business.
func removeStaleFolders() {
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), folderPrefix) {
			continue
		}
		dir := filepath.Join(os.TempDir(), e.Name())
		if isStale(dir) {
			_ = os.RemoveAll(dir)
		}
	}
}

func isStale(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if errors.Is(err, os.ErrNotExist) {
		// The owner file is written just after the folder is created:
		// without it, the folder is stale only once it is old.
		info, err := os.Stat(dir)
		return err == nil && time.Since(info.ModTime()) > staleNoOwnerAge
	}
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return false
	}
	return !processAlive(pid)
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
