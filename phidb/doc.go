// Package phidb is a TLS-only pgx v5 connection pool that encrypts the PHI
// fields of tagged structs, keeps blind indexes beside them for equality
// lookups, and records who read or wrote which row.
//
// An application swaps *pgxpool.Pool for *phidb.Pool:
//
//	kek, _ := keys.LocalKEKFromEnv()        // a Tink KMS AEAD in production
//	kr, _ := keys.Load("keyring.json", kek)
//	db, err := phidb.New(ctx, "host=db.internal dbname=clinic sslrootcert=ca.pem",
//		phidb.Config{Keys: kr, AuditPostgres: true})
//
//	type Patient struct {
//		ID    uuid.UUID `db:"id"    phi:"pk"`
//		Name  string    `db:"name"  phi:"encrypt"`
//		Email string    `db:"email" phi:"encrypt,index=email_bidx:trim+lower"`
//		Ward  string    `db:"ward"`
//	}
//	func (Patient) TableName() string { return "patients" }
//
//	ctx = auditing.WithActor(ctx, auditing.Actor{ID: "u-1842", Role: "clinician"})
//	err = phidb.Insert(ctx, db, &p)
//	ps, err := phidb.Select[Patient](ctx, db, "SELECT * FROM patients WHERE ward = $1", "B2")
//	ps, err = phidb.Lookup[Patient](ctx, db, "Email", "alice@example.com")
//
// The story of a query: Select runs the caller's SQL through pgx, maps
// result columns to struct fields by pgx's rules, copies each envelope out
// of the wire buffer while rows stream in, opens the envelopes on worker
// goroutines (codec), drops blind-index false positives, records one audit
// event per row (auditing), and only then returns the rows. Writes seal
// every tagged field (codec), fill the blind-index columns (blindindex),
// and store the audit events in the same transaction as the data.
//
// Exec, Query, QueryRow, SendBatch and CopyFrom pass through to pgx
// unchanged; Tx.Conn and Conn.Conn hand out the raw *pgx.Conn. They are the
// way around phidb, not through it.
package phidb
