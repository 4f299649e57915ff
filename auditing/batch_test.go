package auditing_test

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/keys"
)

// batchTemplate is the event a query's Batch copies for each row.
func batchTemplate(ctx context.Context) auditing.Event {
	return auditing.NewEvents(ctx, auditing.ActionRead, "patients", []string{"name", "dob"}, "")[0]
}

func pkRange(prefix string, from, to int) []string {
	pks := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		pks = append(pks, fmt.Sprintf("%s-%d", prefix, i))
	}
	return pks
}

// A batch sealed while the chain stays still is appended as it was sealed,
// and the chain verifies; its events share time and count up their IDs.
func TestBatchAppend(t *testing.T) {
	ctx := actorCtx("u-1")
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	rec := &recorder{}
	require.NoError(t, c.Append(ctx, readEvents(ctx, "before", 3), rec.Write))

	b := c.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 300)...)
	b.Add(batchTemplate(ctx), pkRange("p", 300, 700)...)
	require.Equal(t, 700, b.Len())
	require.NoError(t, c.AppendBatch(ctx, b, rec.writeBatch))

	all := rec.all()
	require.Len(t, all, 703)
	r := auditing.Verify(all, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
	require.Equal(t, uint64(703), c.Head().Seq)
	batch := all[3:]
	for i, e := range batch {
		require.Equal(t, uint64(4+i), e.Seq)
		require.Equal(t, fmt.Sprintf("p-%d", i), e.PK)
		require.Equal(t, batch[0].Time, e.Time)
		require.Equal(t, "u-1", e.Actor.ID)
		if i > 0 {
			require.Equal(t, batch[i-1].Hash, e.PrevHash)
			require.Equal(t, batch[0].ID[:8], e.ID[:8], "the IDs share their time bits")
			require.NotEqual(t, batch[i-1].ID, e.ID)
		}
	}
	require.Equal(t, all[2].Hash, batch[0].PrevHash)

	// Used once only.
	require.Error(t, c.AppendBatch(ctx, b, rec.writeBatch))
	require.Len(t, rec.all(), 703)
	// An empty batch appends nothing.
	require.NoError(t, c.AppendBatch(ctx, c.Begin(), rec.writeBatch))
	require.Equal(t, uint64(703), c.Head().Seq)
	// A batch of another chain is refused.
	other := auditing.NewChain("s2", mac)
	ob := other.Begin()
	ob.Add(batchTemplate(ctx), "x")
	require.Error(t, c.AppendBatch(ctx, ob, rec.writeBatch))
}

// When another Append comes between Begin and AppendBatch, the batch is
// sealed again from the new head, and the chain still verifies.
func TestBatchResealedAfterAnotherAppend(t *testing.T) {
	ctx := actorCtx("u-1")
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	rec := &recorder{}
	b := c.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 10)...)
	require.NoError(t, c.Append(ctx, readEvents(ctx, "meanwhile", 2), rec.Write))
	require.NoError(t, c.AppendBatch(ctx, b, rec.writeBatch))
	all := rec.all()
	require.Len(t, all, 12)
	require.Equal(t, "p-0", all[2].PK)
	require.Equal(t, uint64(3), all[2].Seq)
	r := auditing.Verify(all, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
}

// A failing write leaves the head where it was and no gap.
func TestBatchWriteFails(t *testing.T) {
	ctx := actorCtx("u-1")
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	rec := &recorder{}
	require.NoError(t, c.Append(ctx, readEvents(ctx, "a", 2), rec.Write))
	b := c.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 5)...)
	boom := errors.New("sink down")
	require.ErrorIs(t, c.AppendBatch(ctx, b, func(context.Context, *auditing.Batch) error { return boom }), boom)
	require.Equal(t, uint64(2), c.Head().Seq)
	require.NoError(t, c.Append(ctx, readEvents(ctx, "b", 2), rec.Write))
	r := auditing.Verify(rec.all(), mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
	require.Equal(t, uint64(4), c.Head().Seq)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	b = c.Begin()
	b.Add(batchTemplate(ctx), "x")
	require.ErrorIs(t, c.AppendBatch(cctx, b, rec.writeBatch), context.Canceled)
	require.Equal(t, uint64(4), c.Head().Seq)
}

// Batches and Appends from many goroutines make one intact chain, whatever
// the interleaving.
func TestBatchConcurrent(t *testing.T) {
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	rec := &recorder{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			ctx := actorCtx(fmt.Sprint("u-", g))
			for i := range 40 {
				if i%2 == 0 {
					b := c.Begin()
					for k := range 3 {
						b.Add(batchTemplate(ctx), pkRange(fmt.Sprintf("g%d-%d-%d", g, i, k), 0, 20)...)
					}
					require.NoError(t, c.AppendBatch(ctx, b, rec.writeBatch))
				} else {
					require.NoError(t, c.Append(ctx, readEvents(ctx, fmt.Sprintf("g%d-%d", g, i), 5), rec.Write))
				}
			}
		})
	}
	wg.Wait()
	all := rec.all()
	require.Len(t, all, 8*(20*60+20*5))
	r := auditing.Verify(all, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
}

// A batch's events go to PostgreSQL as one row and read back intact.
func TestBatchPostgres(t *testing.T) {
	ctx := actorCtx("u-1")
	pool := newPool(t)
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	sink := auditing.NewPostgresSink(pool)
	b := c.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 500)...)
	b.Add(batchTemplate(ctx), "0190b1f4-7c1e-7000-8000-00000000002a")
	require.NoError(t, c.AppendBatch(ctx, b, sink.WriteBatch))
	var rows int
	require.NoError(t, pool.QueryRow(ctx, "SELECT count(*) FROM phidb_audit").Scan(&rows))
	require.Equal(t, 1, rows)
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Len(t, events, 501)
	require.Equal(t, b.Events(), events)
	r := auditing.Verify(events, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
}

// writeBatch is a write function for AppendBatch that records the events.
func (r *recorder) writeBatch(ctx context.Context, b *auditing.Batch) error {
	return r.Write(ctx, b.Events())
}

// Keys given as UUIDs, as UUID texts and as other strings, in any mix,
// make the events Append would make.
func TestBatchKeys(t *testing.T) {
	ctx := actorCtx("u-1")
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	rec := &recorder{}
	u1, u2 := uuid.New(), uuid.New()
	b := c.Begin()
	b.AddUUIDs(batchTemplate(ctx), u1)
	b.Add(batchTemplate(ctx), u2.String())
	b.Add(batchTemplate(ctx), "42", "bad\x00key")
	b.AddUUIDs(batchTemplate(ctx), u1)
	require.NoError(t, c.AppendBatch(ctx, b, rec.writeBatch))
	got := rec.all()
	require.Equal(t, []string{u1.String(), u2.String(), "42", "bad\uFFFDkey", u1.String()},
		[]string{got[0].PK, got[1].PK, got[2].PK, got[3].PK, got[4].PK})
	r := auditing.Verify(got, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())

	// The same events sealed by Append give the same hashes.
	c2 := auditing.NewChain("s", mac)
	again := make([]auditing.Event, len(got))
	for i, e := range got {
		again[i] = e
		again[i].Seq, again[i].PrevHash, again[i].Hash = 0, nil, nil
	}
	require.NoError(t, c2.Append(ctx, again, nil))
	for i := range got {
		require.Equal(t, got[i].Hash, again[i].Hash, "event %d", i)
	}
}

// Every event of a batch shares the template of its first Add.
func TestBatchTemplateMismatch(t *testing.T) {
	ctx := actorCtx("u-1")
	c := auditing.NewChain("s", newChainMAC(t))
	b := c.Begin()
	b.Add(batchTemplate(ctx), "1")
	other := batchTemplate(ctx)
	other.Table = "visits"
	b.Add(other, "2")
	err := c.AppendBatch(ctx, b, nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "share")
	require.Zero(t, c.Head().Seq)
}

// ReadPostgres computes the hashes inside batches with the key that sealed
// them, after a rotation too; without a MAC it lists the events with the
// hashes stored at batch boundaries only.
func TestReadPostgresKeysAndNoMAC(t *testing.T) {
	ctx := actorCtx("u-1")
	pool := newPool(t)
	kr, err := keys.Generate()
	require.NoError(t, err)
	sink := auditing.NewPostgresSink(pool)
	old := auditing.NewChain("old", kr.AuditChainMAC())
	require.NoError(t, old.Append(ctx, readEvents(ctx, "o", 5), sink.Write))
	_, err = kr.RotateAudit()
	require.NoError(t, err)
	fresh := auditing.NewChain("new", kr.AuditChainMAC())
	b := fresh.Begin()
	b.Add(batchTemplate(ctx), pkRange("n", 0, 5)...)
	require.NoError(t, fresh.AppendBatch(ctx, b, sink.WriteBatch))
	heads := []auditing.Checkpoint{old.Head(), fresh.Head()}

	events, err := auditing.ReadPostgres(ctx, pool, kr.AuditChainMAC())
	require.NoError(t, err)
	require.Len(t, events, 10)
	r := auditing.Verify(events, kr.AuditMAC(), heads)
	require.True(t, r.OK(), r.String())

	// AuditMAC computes with the new key only: the old stream's batch
	// cannot be recomputed and shows as changed.
	events, err = auditing.ReadPostgres(ctx, pool, kr.AuditMAC())
	require.NoError(t, err)
	r = auditing.Verify(events, kr.AuditMAC(), heads)
	require.Len(t, r.Problems, 1, r.String())
	require.Equal(t, "old", r.Problems[0].Stream)

	listed, err := auditing.ReadPostgres(ctx, pool, nil)
	require.NoError(t, err)
	require.Len(t, listed, 10)
	for i, e := range listed {
		require.Equal(t, events[i].PK, e.PK)
		require.Equal(t, events[i].Seq, e.Seq)
		if e.Seq == 5 {
			require.Equal(t, events[i].Hash, e.Hash, "the last hash of a batch is stored")
		} else {
			require.Nil(t, e.Hash)
		}
	}
	require.False(t, auditing.Verify(listed, kr.AuditMAC(), heads).OK())
}

// A batch of several thousand events (several chunks of hashes, and the
// parallel path of ReadPostgres), sealed again after an Append and after a
// Reset, with checkpoints, goes through PostgreSQL intact; times never go
// back along the chain.
func TestBatchLargeResealedPostgres(t *testing.T) {
	for _, meanwhile := range []string{"nothing", "append", "reset"} {
		t.Run(meanwhile, func(t *testing.T) {
			ctx := actorCtx("u-1")
			pool := newPool(t)
			mac := newChainMAC(t)
			sink := auditing.NewPostgresSink(pool)
			c := auditing.NewChain("s", mac)
			var cps []auditing.Checkpoint
			c.SetCheckpointFunc(1000, func(cp auditing.Checkpoint) { cps = append(cps, cp) })
			require.NoError(t, c.Append(ctx, readEvents(ctx, "a", 3), sink.Write))
			b := c.Begin()
			for lo := 0; lo < 5000; lo += 256 {
				keys := make([]uuid.UUID, min(256, 5000-lo))
				for i := range keys {
					keys[i] = uuid.New()
				}
				b.AddUUIDs(batchTemplate(ctx), keys...)
			}
			switch meanwhile {
			case "append":
				time.Sleep(2 * time.Millisecond)
				require.NoError(t, c.Append(ctx, readEvents(ctx, "m", 2), sink.Write))
			case "reset":
				head := c.Head()
				c.Reset(head.Seq, head.Hash)
			}
			require.NoError(t, c.AppendBatch(ctx, b, sink.WriteBatch))
			require.NoError(t, c.Append(ctx, readEvents(ctx, "z", 1), sink.Write))
			require.NotEmpty(t, cps)

			events, err := auditing.ReadPostgres(ctx, pool, mac)
			require.NoError(t, err)
			want := 3 + 5000 + 1
			if meanwhile == "append" {
				want += 2
			}
			require.Len(t, events, want)
			r := verifyPostgres(t, pool, mac, append(cps, c.Head()))
			require.True(t, r.OK(), r.String())
			for i := 1; i < len(events); i++ {
				require.False(t, events[i].Time.Before(events[i-1].Time), "time goes back at seq %d", events[i].Seq)
			}
		})
	}
}

// A change inside a large stored batch is found at its seq, on the
// parallel path of ReadPostgres; so is a replaced last check.
func TestBatchLargeTampered(t *testing.T) {
	ctx := actorCtx("u-1")
	pool := newPool(t)
	mac := newChainMAC(t)
	c := auditing.NewChain("s", mac)
	b := c.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 6000)...)
	require.NoError(t, c.AppendBatch(ctx, b, auditing.NewPostgresSink(pool).WriteBatch))
	heads := []auditing.Checkpoint{c.Head()}
	for _, tc := range []struct {
		name, sql string
		seq       uint64
	}{
		// Keys "p-0".."p-9" take 4 bytes, "p-10".."p-99" 5, "p-100".."p-999"
		// 6 and the rest 7: the key of event 4001 ("p-4000") starts at byte
		// 1 + 10*4 + 90*5 + 900*6 + 3000*7 + 2 (format byte, length byte).
		{"pk of seq 4001", `UPDATE phidb_audit SET pks = overlay(pks PLACING convert_to('q', 'UTF8') FROM 26893 FOR 1)`, 4001},
		{"last check", `UPDATE phidb_audit SET checks = overlay(checks PLACING '\xdeadbeef'::bytea FROM 23997 FOR 4)`, 6000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer tx.Rollback(ctx)
			for _, sql := range []string{"ALTER TABLE phidb_audit DISABLE TRIGGER ALL", tc.sql} {
				_, err := tx.Exec(ctx, sql)
				require.NoError(t, err, sql)
			}
			requireProblem(t, verifyPostgres(t, tx, mac, heads), "s", tc.seq, auditing.KindAltered)
		})
	}
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.True(t, auditing.Verify(events, mac, heads).OK())
}

// failingMAC fails after n tags.
type failingMAC struct {
	n     int
	inner tink.MAC
}

func (f *failingMAC) ComputeMAC(data []byte) ([]byte, error) {
	if f.n == 0 {
		return nil, errors.New("hsm unavailable")
	}
	f.n--
	return f.inner.ComputeMAC(data)
}

func (f *failingMAC) VerifyMAC(tag, data []byte) error { return f.inner.VerifyMAC(tag, data) }

// A MAC that fails while a batch is sealed fails its AppendBatch, and the
// batch hands out nothing; a batch is written only while it is appended.
func TestBatchFailures(t *testing.T) {
	ctx := actorCtx("u-1")
	pool := newPool(t)
	sink := auditing.NewPostgresSink(pool)
	c := auditing.NewChain("s", &failingMAC{n: 3, inner: newMAC(t)})
	b := c.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 10)...)
	require.Nil(t, b.Events())
	require.ErrorContains(t, sink.WriteBatch(ctx, b), "hsm unavailable")
	err := c.AppendBatch(ctx, b, sink.WriteBatch)
	require.ErrorContains(t, err, "hsm unavailable")
	require.ErrorContains(t, err, "seq 4")
	require.Zero(t, c.Head().Seq)

	ok := auditing.NewChain("t", newChainMAC(t))
	b = ok.Begin()
	b.Add(batchTemplate(ctx), pkRange("p", 0, 10)...)
	require.ErrorContains(t, sink.WriteBatch(ctx, b), "only Chain.AppendBatch")
	require.Zero(t, countRows(t, pool, ""))
}

// ReadPostgres returns an error, never panics, for rows of any shape, as
// someone who dropped the table's constraints could store them.
func TestReadPostgresMalformedRows(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newChainMAC(t)
	_, err := pool.Exec(ctx, `ALTER TABLE phidb_audit DROP CONSTRAINT phidb_audit_batch_shape,
		DROP CONSTRAINT phidb_audit_first_seq_check, DISABLE TRIGGER ALL`)
	require.NoError(t, err)
	rnd := rand.New(rand.NewPCG(1, 2))
	jitter := func() int {
		if rnd.IntN(3) == 0 {
			return rnd.IntN(5) - 2
		}
		return 0
	}
	zeros := func(n int) []byte { return make([]byte, max(0, n)) }
	for i := range 300 {
		n := rnd.IntN(5) + 1
		ids := zeros(16 + jitter())
		if rnd.IntN(2) == 0 {
			ids = zeros(16*n + jitter())
		}
		pks := append([]byte{pksFormat(rnd)}, zeros(16*n+jitter())...)
		if pks[0] == 0 {
			pks = pks[:1]
			for range n {
				l := rnd.IntN(4)
				if rnd.IntN(6) == 0 {
					l = 200
				}
				pks = append(append(pks, byte(l)), zeros(l)...)
			}
			if rnd.IntN(3) == 0 {
				pks = pks[:rnd.IntN(len(pks))]
			}
		}
		first := int64(rnd.IntN(5)) - 1
		last := first + int64(n) - 1 + int64(jitter())
		if rnd.IntN(30) == 0 {
			last = 1<<63 - 1
		}
		_, err := pool.Exec(ctx, `DELETE FROM phidb_audit;
			INSERT INTO phidb_audit (stream, first_seq, last_seq, prev_hash, event_time, actor_id, actor_role, action, table_name,
				column_names, purpose, client_addr, request_id, outcome, reason, ids, pks, checks, last_hash)
			VALUES ('s', `+fmt.Sprint(first, ", ", last)+`, '\x00', now(), 'a', 'r', 'read', 't', '{}', '', '', '', 'ok', '',
				decode('`+hex.EncodeToString(ids)+`', 'hex'), decode('`+hex.EncodeToString(pks)+`', 'hex'),
				decode('`+hex.EncodeToString(zeros(4*n+jitter()))+`', 'hex'), decode('`+hex.EncodeToString(zeros(rnd.IntN(40)))+`', 'hex'))`)
		require.NoError(t, err)
		require.NotPanics(t, func() {
			events, err := auditing.ReadPostgres(ctx, pool, mac)
			if err == nil {
				require.NotEmpty(t, events, "iteration %d", i)
			}
			_, verr := auditing.VerifyPostgres(ctx, pool, mac, nil)
			require.Equal(t, err == nil, verr == nil, "iteration %d: %v, %v", i, err, verr)
		}, "iteration %d", i)
	}
}

func pksFormat(rnd *rand.Rand) byte { return byte(rnd.IntN(3)) }
