package auditing_test

import (
	"context"
	"fmt"
	"io"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/phidb/phidb/auditing"
)

// BenchmarkVerify verifies 100,000 events in 4 streams (batches of 1,000).
func BenchmarkVerify(b *testing.B) {
	mac := newMAC(b)
	u := actorCtx("bench-user")
	var events []auditing.Event
	chains := []*auditing.Chain{}
	for s := range 4 {
		chains = append(chains, auditing.NewChain(fmt.Sprint("pool-", s), mac))
	}
	for i := range 100 {
		ev := readEvents(u, "0190b1f4-7c1e-7000-8000-0000000", 1000)
		require.NoError(b, chains[i%4].Append(u, ev, nil))
		events = append(events, ev...)
	}
	var cps []auditing.Checkpoint
	for _, c := range chains {
		cps = append(cps, c.Head())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r := auditing.Verify(events, mac, cps); !r.OK() {
			b.Fatal(r)
		}
	}
	b.ReportMetric(float64(len(events))*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAppend10k seals one 10,000-event batch (a 10,000-row query)
// without writing it. Each iteration first copies the unsealed batch (about
// 3 MB of memcpy) so that IDs and times are assigned afresh.
func BenchmarkAppend10k(b *testing.B) {
	mac := newChainMAC(b)
	c := auditing.NewChain("bench", mac)
	u := actorCtx("bench-user")
	template := readEvents(u, "0190b1f4-7c1e-7000-8000-0000000", 10000)
	work := make([]auditing.Event, len(template))
	b.ReportAllocs()
	for b.Loop() {
		copy(work, template)
		if err := c.Append(u, work, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/append")
}

// BenchmarkAppend1 is the cost per audited single-row query.
func BenchmarkAppend1(b *testing.B) {
	mac := newChainMAC(b)
	c := auditing.NewChain("bench", mac)
	u := actorCtx("bench-user")
	template := readEvents(u, "0190b1f4-7c1e-7000-8000-000000000001", 1)
	work := make([]auditing.Event, 1)
	b.ReportAllocs()
	for b.Loop() {
		copy(work, template)
		if err := c.Append(u, work, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPostgresSinkWrite10k stores one sealed 10,000-event batch per
// iteration (one INSERT with array parameters) in a local TLS PostgreSQL.
func BenchmarkPostgresSinkWrite10k(b *testing.B) {
	benchmarkPostgresWrite(b, 10000, 0)
}

// BenchmarkPostgresSinkWrite10kRuns4 is the same with four actors of 2,500
// events each: four rows in one statement.
func BenchmarkPostgresSinkWrite10kRuns4(b *testing.B) {
	benchmarkPostgresWrite(b, 10000, 2500)
}

// BenchmarkPostgresSinkWrite10kEach is the same with every event of a
// different actor: 10,000 rows in one statement, the worst case.
func BenchmarkPostgresSinkWrite10kEach(b *testing.B) {
	benchmarkPostgresWrite(b, 10000, 1)
}

// BenchmarkPostgresSinkWrite1 stores one single-event batch per iteration.
func BenchmarkPostgresSinkWrite1(b *testing.B) {
	benchmarkPostgresWrite(b, 1, 0)
}

// benchmarkPostgresWrite writes n events per iteration, changing actor
// every run events (0: never).
func benchmarkPostgresWrite(b *testing.B, n, run int) {
	ctx := context.Background()
	pool := newPool(b)
	mac := newMAC(b)
	c := auditing.NewChain("bench", mac)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("bench-user")
	template := readEvents(u, "0190b1f4-7c1e-7000-8000-0000000", n)
	if run > 0 {
		for i := range template {
			template[i].Actor.ID = fmt.Sprint("user-", i/run)
		}
	}
	work := make([]auditing.Event, n)
	// Warm up the connection and its statement cache.
	copy(work, template)
	require.NoError(b, c.Append(ctx, work, sink.Write))
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		copy(work, template)
		require.NoError(b, c.Append(ctx, work, nil))
		b.StartTimer()
		if err := sink.Write(ctx, work); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/write")
}

// BenchmarkReadPostgres reads back and expands 100,000 events, computing
// their hashes again.
func BenchmarkReadPostgres(b *testing.B) {
	ctx := context.Background()
	pool, mac, _ := stored100k(b)
	for b.Loop() {
		events, err := auditing.ReadPostgres(ctx, pool, mac)
		if err != nil || len(events) != 100000 {
			b.Fatal(err, len(events))
		}
	}
}

// BenchmarkJSONSinkWrite10k encodes and writes a 10,000-event batch.
func BenchmarkJSONSinkWrite10k(b *testing.B) {
	c := auditing.NewChain("bench", newMAC(b))
	u := actorCtx("bench-user")
	events := readEvents(u, "0190b1f4-7c1e-7000-8000-0000000", 10000)
	require.NoError(b, c.Append(u, events, nil))
	sink := auditing.NewJSONSink(io.Discard)
	b.ReportAllocs()
	for b.Loop() {
		if err := sink.Write(u, events); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatchAdd10k seals 10,000 read events with UUID keys through a
// Batch, in chunks of 256 as phidb's reads do, without appending them.
func BenchmarkBatchAdd10k(b *testing.B) {
	c := auditing.NewChain("bench", newChainMAC(b))
	u := actorCtx("bench-user")
	template := auditing.NewEvents(u, auditing.ActionRead, "patients", []string{"name", "dob", "notes"}, "")[0]
	keys := make([]uuid.UUID, 10000)
	for i := range keys {
		keys[i] = uuid.Must(uuid.NewV7())
	}
	b.ReportAllocs()
	for b.Loop() {
		batch := c.Begin()
		for lo := 0; lo < len(keys); lo += 256 {
			batch.AddUUIDs(template, keys[lo:min(lo+256, len(keys))]...)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/batch")
}

// BenchmarkVerifyPostgres checks 100,000 stored events (10 batches) one
// batch at a time, against reading them all and then verifying them.
func BenchmarkVerifyPostgres(b *testing.B) {
	ctx := context.Background()
	pool, mac, head := stored100k(b)
	cps := []auditing.Checkpoint{head}
	b.Run("streaming", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r, err := auditing.VerifyPostgres(ctx, pool, mac, cps)
			if err != nil || !r.OK() || r.Events != 100000 {
				b.Fatal(err, r)
			}
		}
		b.ReportMetric(100000*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("read-then-verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			events, err := auditing.ReadPostgres(ctx, pool, mac)
			if err != nil {
				b.Fatal(err)
			}
			if r := auditing.Verify(events, mac, cps); !r.OK() || r.Events != 100000 {
				b.Fatal(r)
			}
		}
		b.ReportMetric(100000*float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}

// stored100k stores 100,000 read events in 10 batches of one stream and
// returns the pool, the MAC and the stream's head.
func stored100k(b *testing.B) (*pgxpool.Pool, tink.MAC, auditing.Checkpoint) {
	ctx := context.Background()
	pool := newPool(b)
	mac := newChainMAC(b)
	c := auditing.NewChain("bench", mac)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("bench-user")
	for range 10 {
		require.NoError(b, c.Append(ctx, readEvents(u, "0190b1f4-7c1e-7000-8000-0000000", 10000), sink.Write))
	}
	return pool, mac, c.Head()
}
