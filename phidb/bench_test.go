package phidb_test

// Benchmarks of phidb against raw pgx on the same TLS pool. Each benchmark
// has a phidb sub-benchmark and a raw pgx baseline that share one database
// and one *phidb.Pool (whose Query and CopyFrom are plain pgx passthroughs),
// so their ratio compares only what phidb adds. Run them with
// scripts/bench-ratios.sh, which interleaves the two sides and prints the
// ratios against their targets. Without -bench nothing here runs: the setup
// lives inside the benchmark functions.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/phidb"
)

const benchRows = 10_000

// benchPatient is the encrypted model: four PHI strings of 18-50 bytes,
// 32 on average.
type benchPatient struct {
	ID      uuid.UUID `db:"id" phi:"pk"`
	Name    string    `db:"name" phi:"encrypt"`
	Email   string    `db:"email" phi:"encrypt"`
	Phone   string    `db:"phone" phi:"encrypt"`
	Address string    `db:"address" phi:"encrypt"`
}

func (benchPatient) TableName() string { return "bench_patients" }

// benchPatientPlain is its plaintext twin, for the raw pgx side.
type benchPatientPlain struct {
	ID      uuid.UUID `db:"id"`
	Name    string    `db:"name"`
	Email   string    `db:"email"`
	Phone   string    `db:"phone"`
	Address string    `db:"address"`
}

const (
	benchDDLEnc      = `CREATE TABLE bench_patients (id uuid PRIMARY KEY, name bytea, email bytea, phone bytea, address bytea)`
	benchDDLPlain    = `CREATE TABLE bench_patients_plain (id uuid PRIMARY KEY, name text, email text, phone text, address text)`
	benchSelectEnc   = `SELECT id, name, email, phone, address FROM bench_patients`
	benchSelectPlain = `SELECT id, name, email, phone, address FROM bench_patients_plain`
)

var (
	benchPlainTable = pgx.Identifier{"bench_patients_plain"}
	benchColumns    = []string{"id", "name", "email", "phone", "address"}
)

// benchData returns the same n rows twice, encrypted model and plaintext
// twin: UUIDv7 keys set up front (InsertMany keeps them, as COPY does) and
// deterministic, realistic values.
func benchData(b *testing.B, n int) ([]benchPatient, []benchPatientPlain) {
	b.Helper()
	first := []string{"Margaret", "Olufemi", "Christopher", "Anastasia", "Rajesh", "Guadalupe", "Wojciech", "Siobhan"}
	last := []string{"Fitzgerald", "Okonkwo-Adebayo", "Vanderbilt", "Castellanos", "Nakamura", "Lindqvist", "Abernathy", "Przybylski"}
	streets := []string{"Maple Avenue", "Old Mill Road", "Harborview Drive", "Chestnut Street", "Kingsbridge Lane"}
	cities := []string{"Springfield, IL 62704", "Portland, OR 97205", "Albany, NY 12207", "Madison, WI 53703"}
	r := rand.New(rand.NewPCG(1, 2))
	enc := make([]benchPatient, n)
	plain := make([]benchPatientPlain, n)
	for i := range enc {
		id, err := uuid.NewV7()
		require.NoError(b, err)
		f, l := first[r.IntN(len(first))], last[r.IntN(len(last))]
		p := benchPatientPlain{
			ID:      id,
			Name:    fmt.Sprintf("%s %c. %s", f, 'A'+r.IntN(26), l),                                                        // 18-30 bytes
			Email:   fmt.Sprintf("%s.%s%d@example-health.org", f, l, r.IntN(10000)),                                        // 35-50 bytes
			Phone:   fmt.Sprintf("+1 (%03d) %03d-%04d ext. %d", 200+r.IntN(800), r.IntN(1000), r.IntN(10000), r.IntN(100)), // 23-24 bytes
			Address: fmt.Sprintf("%d %s, %s", 1+r.IntN(9999), streets[r.IntN(len(streets))], cities[r.IntN(len(cities))]),  // 32-44 bytes
		}
		plain[i] = p
		enc[i] = benchPatient(p)
	}
	return enc, plain
}

// benchCopyPlain writes the plaintext rows with raw pgx COPY, converting the
// structs to rows as a pgx user would. The key goes in binary form
// ([16]byte), as phidb sends it: pgx encodes a uuid.UUID through its driver.Valuer string, a
// failed encode (with a formatted error) and a re-scan, which costs more
// than the rest of the row (see benchCopyPlainUUID).
func benchCopyPlain(ctx context.Context, db *phidb.Pool, rows []benchPatientPlain) (int64, error) {
	return db.CopyFrom(ctx, benchPlainTable, benchColumns, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		p := &rows[i]
		return []any{[16]byte(p.ID), p.Name, p.Email, p.Phone, p.Address}, nil
	}))
}

// benchCopyPlainUUID is benchCopyPlain passing the key as uuid.UUID, the
// naive way.
func benchCopyPlainUUID(ctx context.Context, db *phidb.Pool, rows []benchPatientPlain) (int64, error) {
	return db.CopyFrom(ctx, benchPlainTable, benchColumns, pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
		p := &rows[i]
		return []any{p.ID, p.Name, p.Email, p.Phone, p.Address}, nil
	}))
}

// BenchmarkSelect10k reads 10,000 rows of 4 encrypted strings with
// phidb.Select, against pgx.CollectRows(RowToStructByName) of the same values
// stored as text. Target: phidb/pgx <= 1.3.
func BenchmarkSelect10k(b *testing.B) {
	ctx := context.Background()
	db, _ := newPool(b, benchDDLEnc, benchDDLPlain)
	enc, plain := benchData(b, benchRows)
	n, err := phidb.InsertMany(ctx, db, enc)
	require.NoError(b, err)
	require.EqualValues(b, benchRows, n)
	n, err = benchCopyPlain(ctx, db, plain)
	require.NoError(b, err)
	require.EqualValues(b, benchRows, n)
	for _, table := range []string{"bench_patients", "bench_patients_plain"} {
		_, err = db.Exec(ctx, "VACUUM ANALYZE "+table)
		require.NoError(b, err)
	}

	// Both sides return the same values.
	gotEnc, err := phidb.Select[benchPatient](ctx, db, benchSelectEnc+" ORDER BY id")
	require.NoError(b, err)
	rows, err := db.Query(ctx, benchSelectPlain+" ORDER BY id")
	require.NoError(b, err)
	gotPlain, err := pgx.CollectRows(rows, pgx.RowToStructByName[benchPatientPlain])
	require.NoError(b, err)
	require.Len(b, gotEnc, benchRows)
	require.Len(b, gotPlain, benchRows)
	for i := range gotEnc {
		if benchPatientPlain(gotEnc[i]) != gotPlain[i] {
			b.Fatalf("row %d differs between the encrypted and the plaintext table", i)
		}
	}

	b.Run("phidb", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out, err := phidb.Select[benchPatient](ctx, db, benchSelectEnc)
			if err != nil {
				b.Fatal(err)
			}
			if len(out) != benchRows {
				b.Fatalf("got %d rows", len(out))
			}
		}
	})
	b.Run("pgx", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rows, err := db.Query(ctx, benchSelectPlain)
			if err != nil {
				b.Fatal(err)
			}
			out, err := pgx.CollectRows(rows, pgx.RowToStructByName[benchPatientPlain])
			if err != nil {
				b.Fatal(err)
			}
			if len(out) != benchRows {
				b.Fatalf("got %d rows", len(out))
			}
		}
	})
}

// BenchmarkInsertMany10k writes 10,000 rows of 4 encrypted strings with
// phidb.InsertMany (one COPY), against raw pgx CopyFrom of the same values
// into text columns. The table is truncated, outside the timer, before every
// iteration of every side. Target: phidb/pgx-copy <= 1.5. pgx-copy-uuid is
// the baseline with the key passed as uuid.UUID, for information.
func BenchmarkInsertMany10k(b *testing.B) {
	ctx := context.Background()
	db, _ := newPool(b, benchDDLEnc, benchDDLPlain)
	enc, plain := benchData(b, benchRows)
	truncate := func(b *testing.B, table string) {
		b.StopTimer()
		if _, err := db.Exec(ctx, "TRUNCATE "+table); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}

	b.Run("phidb", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			truncate(b, "bench_patients")
			n, err := phidb.InsertMany(ctx, db, enc)
			if err != nil {
				b.Fatal(err)
			}
			if n != benchRows {
				b.Fatalf("wrote %d rows", n)
			}
		}
	})
	for _, side := range []struct {
		name string
		copy func(context.Context, *phidb.Pool, []benchPatientPlain) (int64, error)
	}{
		{"pgx-copy", benchCopyPlain},          // the baseline of the ratio
		{"pgx-copy-uuid", benchCopyPlainUUID}, // for information
	} {
		b.Run(side.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				truncate(b, "bench_patients_plain")
				n, err := side.copy(ctx, db, plain)
				if err != nil {
					b.Fatal(err)
				}
				if n != benchRows {
					b.Fatalf("wrote %d rows", n)
				}
			}
		})
	}
}
