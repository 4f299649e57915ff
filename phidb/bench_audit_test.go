package phidb_test

import (
	"context"
	"testing"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/internal/pgtest"
	"github.com/phidb/phidb/phidb"
)

// BenchmarkSelect10kAudit reads the 10,000 rows of BenchmarkSelect10k with
// the synchronous PostgreSQL audit sink (10,000 events recorded, chained
// and stored before the rows are returned) against the same Select with
// auditing off, on the same database. Target: audit/off <= 1.3.
func BenchmarkSelect10kAudit(b *testing.B) {
	ctx := auditing.WithActor(context.Background(), auditing.Actor{ID: "bench", Role: "clinician"})
	cs := pgtest.NewDatabase(b)
	kr := testKeys(b)
	off, err := phidb.New(ctx, cs, phidb.Config{Keys: kr})
	if err != nil {
		b.Fatal(err)
	}
	defer off.Close()
	on, err := phidb.New(ctx, cs, phidb.Config{Keys: kr, AuditPostgres: true})
	if err != nil {
		b.Fatal(err)
	}
	defer on.Close()
	for _, q := range []string{benchDDLEnc} {
		if _, err := off.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	if err := auditing.Init(ctx, off); err != nil {
		b.Fatal(err)
	}
	enc, _ := benchData(b, benchRows)
	if _, err := phidb.InsertMany(ctx, off, enc); err != nil {
		b.Fatal(err)
	}
	for _, side := range []struct {
		name string
		db   *phidb.Pool
	}{{"audit-postgres", on}, {"audit-off", off}} {
		b.Run(side.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				out, err := phidb.Select[benchPatient](ctx, side.db, benchSelectEnc)
				if err != nil || len(out) != benchRows {
					b.Fatalf("%d rows, %v", len(out), err)
				}
			}
		})
	}
}
