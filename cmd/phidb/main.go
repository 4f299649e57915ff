// Command phidb manages phidb keyrings and audit logs.
//
//	phidb keys master-key                          print a new development master key (base64)
//	phidb keys generate -keys FILE                 new keyring, encrypted under PHIDB_MASTER_KEY
//	phidb keys info -keys FILE                     list keys (ids, status), never key material
//	phidb keys rotate -keys FILE -keyset data|bidx|audit
//	phidb audit init -database-url URL             create phidb_audit and its append-only triggers
//	phidb audit verify -keys FILE (-database-url URL | -file EVENTS.jsonl) [-checkpoints FILE]
//
// verify prints "intact: N events, S streams" and exits 0, or prints the
// first broken sequence number of each damaged stream and exits 1. Other
// failures exit 2. Database URLs follow phidb's rules: verified TLS only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage:
  phidb keys master-key
  phidb keys generate -keys FILE
  phidb keys info -keys FILE
  phidb keys rotate -keys FILE -keyset data|bidx|audit
  phidb audit init -database-url URL
  phidb audit verify -keys FILE (-database-url URL | -file EVENTS.jsonl) [-checkpoints FILE]
The key-encryption key comes from PHIDB_MASTER_KEY (32 bytes, base64).`

// errUsage marks a command line that does not parse.
var errUsage = errors.New("bad usage")

// run is the whole command; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	var err error
	code := 0
	switch args[0] + " " + args[1] {
	case "keys master-key":
		var k string
		if k, err = keys.NewMasterKey(); err == nil {
			fmt.Fprintln(stdout, k)
		}
	case "keys generate", "keys info", "keys rotate":
		err = keysCmd(args[1], args[2:], stdout)
	case "audit init":
		err = auditInit(ctx, args[2:], stdout)
	case "audit verify":
		code, err = auditVerify(ctx, args[2:], stdout)
	default:
		err = errUsage
	}
	switch {
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, usage)
		return 2
	case err != nil:
		fmt.Fprintln(stderr, "phidb:", err)
		return 2
	}
	return code
}

func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return errUsage
	}
	return nil
}

func keysCmd(cmd string, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keys", flag.ContinueOnError)
	path := fs.String("keys", "", "keyring file")
	keyset := fs.String("keyset", "", "data, bidx or audit")
	if err := parse(fs, args); err != nil || *path == "" {
		return errUsage
	}
	kek, err := keys.LocalKEKFromEnv()
	if err != nil {
		return err
	}
	var kr *keys.Keyring
	if cmd == "generate" {
		if _, err := os.Stat(*path); err == nil {
			return fmt.Errorf("%s exists; refusing to overwrite a keyring", *path)
		}
		if kr, err = keys.Generate(); err != nil {
			return err
		}
		if err := kr.Save(*path, kek); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (mode 0600), encrypted under PHIDB_MASTER_KEY\n", *path)
	} else if kr, err = keys.Load(*path, kek); err != nil {
		return err
	}
	if cmd == "rotate" {
		var id uint32
		switch *keyset {
		case "data":
			id, err = kr.RotateData()
		case "bidx":
			id, err = kr.RotatePRF()
		case "audit":
			id, err = kr.RotateAudit()
		default:
			return errUsage
		}
		if err != nil {
			return err
		}
		if err := kr.Save(*path, kek); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s: new primary key %d\n", *keyset, id)
	}
	for _, k := range kr.Info() {
		primary := ""
		if k.Primary {
			primary = " primary"
		}
		fmt.Fprintf(stdout, "%-5s %10d %s%s\n", k.Keyset, k.ID, k.Status, primary)
	}
	return nil
}

// connect opens a phidb pool for the CLI's own work on the audit table.
func connect(ctx context.Context, url string, kr *keys.Keyring) (*phidb.Pool, error) {
	if kr == nil {
		var err error
		if kr, err = keys.Generate(); err != nil { // the pool needs a keyring; init reads no PHI
			return nil, err
		}
	}
	return phidb.New(ctx, url, phidb.Config{Keys: kr})
}

func auditInit(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("audit init", flag.ContinueOnError)
	url := fs.String("database-url", os.Getenv("PHIDB_DATABASE_URL"), "database")
	if err := parse(fs, args); err != nil || *url == "" {
		return errUsage
	}
	db, err := connect(ctx, *url, nil)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := auditing.Init(ctx, db); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "phidb_audit is ready (append-only: UPDATE, DELETE and TRUNCATE are refused)")
	return nil
}

func auditVerify(ctx context.Context, args []string, stdout io.Writer) (int, error) {
	fs := flag.NewFlagSet("audit verify", flag.ContinueOnError)
	path := fs.String("keys", os.Getenv("PHIDB_KEYS"), "keyring file")
	url := fs.String("database-url", "", "read events from phidb_audit in this database")
	file := fs.String("file", "", "read events from this JSON-lines file")
	cpFile := fs.String("checkpoints", "", "JSON-lines file of checkpoints {stream, seq, hash}")
	if err := parse(fs, args); err != nil || *path == "" || (*url == "") == (*file == "") {
		return 0, errUsage
	}
	kek, err := keys.LocalKEKFromEnv()
	if err != nil {
		return 0, err
	}
	kr, err := keys.Load(*path, kek)
	if err != nil {
		return 0, err
	}
	var cps []auditing.Checkpoint
	if *cpFile != "" {
		if cps, err = auditing.ReadCheckpointsFile(*cpFile); err != nil {
			return 0, err
		}
	}
	var report auditing.Report
	if *file != "" {
		f, err := os.Open(*file)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		events, err := auditing.ReadJSON(f)
		if err != nil {
			return 0, err
		}
		report = auditing.Verify(events, kr.AuditMAC(), cps)
	} else {
		db, err := connect(ctx, *url, kr)
		if err != nil {
			return 0, err
		}
		defer db.Close()
		// One batch at a time: the table may be far larger than memory.
		if report, err = auditing.VerifyPostgres(ctx, db, kr.AuditChainMAC(), cps); err != nil {
			return 0, err
		}
	}
	fmt.Fprintln(stdout, report.String())
	if !report.OK() {
		return 1, nil
	}
	return 0, nil
}
