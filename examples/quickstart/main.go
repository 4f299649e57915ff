// Command quickstart shows phidb end to end with nothing set up: it makes a
// keyring, starts a throwaway PostgreSQL with TLS, writes three patients,
// shows what a DBA would see next to what the application reads, and shows a
// plaintext connection being refused.
//
//	go run ./examples/quickstart
//
// PHIDB_DATABASE_URL uses an existing database instead of a throwaway one;
// PHIDB_KEYS (with PHIDB_MASTER_KEY) uses an existing keyring file.
package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/keys"
	"github.com/phidb/phidb/phidb"
)

// Patient is a model: fields tagged phi:"encrypt" are stored as ciphertext
// bound to table, column and primary key.
type Patient struct {
	ID    uuid.UUID `db:"id"    phi:"pk"`
	Name  string    `db:"name"  phi:"encrypt"`
	Email string    `db:"email" phi:"encrypt,index=email_bidx:trim+lower:bits=16"`
	DOB   time.Time `db:"dob"   phi:"encrypt"`
	Notes *string   `db:"notes" phi:"encrypt"`
	Ward  string    `db:"ward"`
}

// TableName tells phidb which table the model lives in.
func (Patient) TableName() string { return "patients" }

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	kr, err := loadKeys()
	if err != nil {
		return err
	}

	connString := os.Getenv("PHIDB_DATABASE_URL")
	if connString == "" {
		fmt.Println("Starting a throwaway PostgreSQL with TLS...")
		cluster, err := pgtest.Start(pgtest.Options{})
		if err != nil {
			return err
		}
		defer cluster.Stop()
		connString = cluster.ConnString("postgres")
	}

	// Every row read or written is recorded in phidb_audit, hash-chained.
	db, err := phidb.New(ctx, connString, phidb.Config{Keys: kr, AuditPostgres: true})
	if err != nil {
		return err
	}
	defer db.Close()
	if err := auditing.Init(ctx, db); err != nil {
		return err
	}
	// Who is asking, and why: without an actor, phidb refuses PHI.
	ctx = auditing.WithActor(ctx, auditing.Actor{ID: "u-1842", Role: "clinician"})
	ctx = auditing.WithPurpose(ctx, "treatment")
	var tlsVersion string
	if err := db.QueryRow(ctx, "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&tlsVersion); err != nil {
		return err
	}
	fmt.Printf("Connected over %s, certificate verified.\n\n", tlsVersion)

	if _, err := db.Exec(ctx, `CREATE TABLE IF NOT EXISTS patients (
		id uuid PRIMARY KEY, name bytea NOT NULL, email bytea NOT NULL, dob bytea NOT NULL, notes bytea,
		ward text NOT NULL, email_bidx bigint)`); err != nil {
		return err
	}
	if _, err := db.Exec(ctx, `CREATE INDEX IF NOT EXISTS patients_email_bidx ON patients (email_bidx)`); err != nil {
		return err
	}

	notes := "Allergic to penicillin"
	patients := []Patient{
		{Name: "Ada Lovelace", Email: "ada@analytical.example", DOB: time.Date(1815, 12, 10, 0, 0, 0, 0, time.UTC), Notes: &notes, Ward: "B2"},
		{Name: "Mary Seacole", Email: "mary@crimea.example", DOB: time.Date(1805, 11, 23, 0, 0, 0, 0, time.UTC), Ward: "A1"},
		{Name: "Florence Nightingale", Email: "florence@scutari.example", DOB: time.Date(1820, 5, 12, 0, 0, 0, 0, time.UTC), Ward: "A1"},
	}
	if _, err := phidb.InsertMany(ctx, db, patients); err != nil {
		return err
	}
	ids := make([]uuid.UUID, len(patients))
	for i, p := range patients {
		ids[i] = p.ID
	}
	fmt.Println("Wrote 3 patients in one COPY. What a DBA sees in the name column:")
	rows, err := db.Query(ctx, "SELECT id, name FROM patients WHERE id = ANY($1) ORDER BY id", ids)
	if err != nil {
		return err
	}
	raw := map[uuid.UUID][]byte{}
	for rows.Next() {
		var id uuid.UUID
		var name []byte
		if err := rows.Scan(&id, &name); err != nil {
			return err
		}
		raw[id] = name
	}
	if err := rows.Err(); err != nil {
		return err
	}

	got, err := phidb.Select[Patient](ctx, db, "SELECT * FROM patients WHERE id = ANY($1) ORDER BY id", ids)
	if err != nil {
		return err
	}
	for _, p := range got {
		n := "-"
		if p.Notes != nil {
			n = *p.Notes
		}
		fmt.Printf("  %s  name bytea %s...\n", p.ID, hex.EncodeToString(raw[p.ID][:24]))
		fmt.Printf("  %38s decrypted: %-21s born %s  ward %s  notes: %s\n", "", p.Name, p.DOB.Format("2006-01-02"), p.Ward, n)
	}

	fmt.Println("\nFinding a patient by email through the blind index email_bidx (16 bits of a keyed HMAC):")
	found, err := phidb.Lookup[Patient](ctx, db, "Email", "  Mary@Crimea.example ")
	if err != nil {
		return err
	}
	for _, p := range found {
		fmt.Printf("  Lookup(Email = \"  Mary@Crimea.example \") -> %s, %s, ward %s\n", p.ID, p.Name, p.Ward)
	}

	fmt.Println("\nThe audit trail in phidb_audit (who, what, which row; never values):")
	events, err := auditing.ReadPostgres(ctx, db, kr.AuditChainMAC())
	if err != nil {
		return err
	}
	var mine []auditing.Event
	for _, e := range events {
		if e.Stream == db.AuditStream() {
			mine = append(mine, e)
		}
	}
	for _, e := range mine {
		fmt.Printf("  #%-2d %s %-9s %s %-6s %s pk %s (%s)\n", e.Seq, e.Time.Format("15:04:05.000"), e.Actor.ID, e.Actor.Role, e.Action, e.Table, e.PK, e.Purpose)
	}
	fmt.Println("  verify:", auditing.Verify(mine, kr.AuditMAC(), []auditing.Checkpoint{db.AuditHead()}))

	fmt.Println("\nA plaintext connection is refused before anything is sent:")
	_, err = phidb.New(ctx, "host=127.0.0.1 port=5432 user=postgres dbname=postgres sslmode=disable", phidb.Config{Keys: kr})
	fmt.Println(" ", err)
	return nil
}

// loadKeys opens the keyring named by PHIDB_KEYS, or makes one in a
// temporary folder, saved encrypted under a development master key.
func loadKeys() (*keys.Keyring, error) {
	if path := os.Getenv("PHIDB_KEYS"); path != "" {
		kek, err := keys.LocalKEKFromEnv()
		if err != nil {
			return nil, err
		}
		fmt.Println("Using the keyring in", path)
		return keys.Load(path, kek)
	}
	dir, err := os.MkdirTemp("", "phidb-quickstart-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	master, err := keys.NewMasterKey()
	if err != nil {
		return nil, err
	}
	kek, err := keys.LocalKEK(master)
	if err != nil {
		return nil, err
	}
	kr, err := keys.Generate()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "keyring.json")
	if err := kr.Save(path, kek); err != nil {
		return nil, err
	}
	fmt.Println("Generated a keyring, saved encrypted under a development master key (set PHIDB_KEYS and PHIDB_MASTER_KEY to keep one).")
	return keys.Load(path, kek)
}
