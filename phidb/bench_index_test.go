package phidb_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/phidb/phidb/phidb"
)

const lookupRows = 100_000

type lookupPatient struct {
	ID    uuid.UUID `db:"id" phi:"pk"`
	Email string    `db:"email" phi:"encrypt,index=email_bidx:lower"`
	Name  string    `db:"name" phi:"encrypt"`
}

func (lookupPatient) TableName() string { return "lookup_patients" }

type lookupPatientPlain struct {
	ID    uuid.UUID `db:"id"`
	Email string    `db:"email"`
	Name  string    `db:"name"`
}

// BenchmarkLookup100k finds one row by email in a 100,000-row table:
// phidb.Lookup through a 32-bit blind index (decrypting the candidates and
// dropping false positives) against raw pgx on an indexed plaintext column.
// Target: phidb/pgx <= 1.3.
func BenchmarkLookup100k(b *testing.B) {
	ctx := context.Background()
	db, _ := newPool(b,
		`CREATE TABLE lookup_patients (id uuid PRIMARY KEY, email bytea, name bytea, email_bidx bigint)`,
		`CREATE TABLE lookup_patients_plain (id uuid PRIMARY KEY, email text, name text)`)
	enc := make([]lookupPatient, lookupRows)
	plain := make([][]any, lookupRows)
	for i := range enc {
		enc[i] = lookupPatient{ID: uuid.Must(uuid.NewV7()), Email: fmt.Sprintf("patient%06d@clinic.example", i), Name: fmt.Sprintf("Patient Number %d", i)}
		plain[i] = []any{[16]byte(enc[i].ID), enc[i].Email, enc[i].Name}
	}
	if _, err := phidb.InsertMany(ctx, db, enc); err != nil {
		b.Fatal(err)
	}
	if _, err := db.CopyFrom(ctx, pgx.Identifier{"lookup_patients_plain"}, []string{"id", "email", "name"}, pgx.CopyFromRows(plain)); err != nil {
		b.Fatal(err)
	}
	for _, q := range []string{"CREATE INDEX ON lookup_patients (email_bidx)", "CREATE INDEX ON lookup_patients_plain (email)", "ANALYZE"} {
		if _, err := db.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("phidb", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			email := enc[(i*7919)%lookupRows].Email
			i++
			got, err := phidb.Lookup[lookupPatient](ctx, db, "Email", email)
			if err != nil || len(got) != 1 {
				b.Fatalf("%d rows, %v", len(got), err)
			}
		}
	})
	b.Run("pgx", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			email := enc[(i*7919)%lookupRows].Email
			i++
			rows, err := db.Query(ctx, "SELECT id, email, name FROM lookup_patients_plain WHERE email = $1", email)
			if err != nil {
				b.Fatal(err)
			}
			got, err := pgx.CollectRows(rows, pgx.RowToStructByName[lookupPatientPlain])
			if err != nil || len(got) != 1 {
				b.Fatalf("%d rows, %v", len(got), err)
			}
		}
	})
}
