package auditing_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/keys"
)

// VerifyPostgres gives the report of Verify on ReadPostgres, whatever was
// done to the table: verifyPostgres requires both to be equal.
func TestVerifyPostgresAgrees(t *testing.T) {
	cases := []struct {
		name  string
		sql   []string
		cps   func([]auditing.Checkpoint) []auditing.Checkpoint
		clean bool
	}{
		{name: "intact", clean: true},
		{name: "checkpoints of absent streams and beyond the end", cps: func(h []auditing.Checkpoint) []auditing.Checkpoint {
			beyond := h[0]
			beyond.Seq += 5
			return append(h, auditing.Checkpoint{Stream: "zz", Seq: 3}, auditing.Checkpoint{Stream: "", Seq: 2}, beyond)
		}},
		{name: "a checkpoint's hash is another seq's", cps: func(h []auditing.Checkpoint) []auditing.Checkpoint {
			wrong := h[1]
			wrong.Seq = 3
			return append(h, wrong)
		}},
		{name: "empty stream name", sql: []string{"UPDATE phidb_audit SET stream = '' WHERE stream = 't'"}},
		{name: "broken at seq 1, more rows after", sql: []string{"UPDATE phidb_audit SET actor_id = 'm' WHERE stream = 's' AND first_seq = 1"}},
		{name: "a row inside the previous one's range", sql: []string{
			"ALTER TABLE phidb_audit DROP CONSTRAINT phidb_audit_pkey",
			`INSERT INTO phidb_audit SELECT stream, 8, 8, prev_hash, event_time, actor_id, actor_role, action, table_name, column_names,
				purpose, client_addr, request_id, outcome, reason, substring(ids FROM 1 FOR 16), '\x0003732d31'::bytea,
				substring(checks FROM 5 FOR 4), last_hash, written_at FROM phidb_audit WHERE stream = 's' AND first_seq = 7`,
		}},
		{name: "two rows with one first seq", sql: []string{
			"ALTER TABLE phidb_audit DROP CONSTRAINT phidb_audit_pkey",
			`INSERT INTO phidb_audit SELECT stream, 7, 7, prev_hash, event_time, 'mallory', actor_role, action, table_name, column_names,
				purpose, client_addr, request_id, outcome, reason, substring(ids FROM 1 FOR 16), '\x0003732d30'::bytea,
				substring(checks FROM 1 FOR 4), last_hash, written_at FROM phidb_audit WHERE stream = 's' AND first_seq = 7`,
		}},
		{name: "a batch duplicated", sql: []string{
			"ALTER TABLE phidb_audit DROP CONSTRAINT phidb_audit_pkey",
			"INSERT INTO phidb_audit SELECT * FROM phidb_audit WHERE stream = 's' AND first_seq = 7",
		}},
		{name: "another stream renamed into this one", sql: []string{"UPDATE phidb_audit SET stream = 's', first_seq = 21, last_seq = 25 WHERE stream = 't'"}},
		{name: "a batch deleted", sql: []string{"DELETE FROM phidb_audit WHERE stream = 's' AND first_seq = 7"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			pool, mac, heads := tamperLog(t)
			a := auditing.NewChain("a", mac)
			u := actorCtx("u")
			require.NoError(t, a.Append(u, readEvents(u, "a", 3), auditing.NewPostgresSink(pool).Write))
			_, err := pool.Exec(ctx, "ALTER TABLE phidb_audit DISABLE TRIGGER ALL")
			require.NoError(t, err)
			for _, sql := range tc.sql {
				_, err := pool.Exec(ctx, sql)
				require.NoError(t, err, sql)
			}
			cps := append(heads, a.Head())
			if tc.cps != nil {
				cps = tc.cps(cps)
			}
			r := verifyPostgres(t, pool, mac, cps)
			require.Equal(t, tc.clean, r.OK(), r.String())
		})
	}
}

// A verified event stored again as a row of its own, with INSERT only (its
// hash is known, for example from a JSON export): both verifiers call it a
// copy.
func TestVerifyPostgresCopyOfAnEvent(t *testing.T) {
	ctx := context.Background()
	pool, mac, heads := tamperLog(t)
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Equal(t, uint64(8), events[7].Seq) // inside batch 7-10
	require.NoError(t, auditing.NewPostgresSink(pool).Write(ctx, events[7:8]))
	r := verifyPostgres(t, pool, mac, heads)
	requireProblem(t, r, "s", 11, auditing.KindInserted)
	require.Contains(t, r.String(), "a copy of seq 8")
}

// Batches of one event sealed before a rotation, checked with a MAC that
// computes with the new key only: both verifiers accept them, as Verify
// accepts any enabled key's hash.
func TestVerifyPostgresRotatedKeyNotKeyedMAC(t *testing.T) {
	pool := newPool(t)
	kr, err := keys.Generate()
	require.NoError(t, err)
	c := auditing.NewChain("s", kr.AuditChainMAC())
	u := actorCtx("u")
	for range 3 {
		require.NoError(t, c.Append(u, readEvents(u, "s", 1), auditing.NewPostgresSink(pool).Write))
	}
	_, err = kr.RotateAudit()
	require.NoError(t, err)
	r := verifyPostgres(t, pool, kr.AuditMAC(), []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
}

// ResyncPostgres adopts the stored events that continue the chain (a write
// that committed after all), and refuses rows that do not.
func TestResyncPostgres(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newChainMAC(t)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("u")
	c := auditing.NewChain("s", mac)
	require.NoError(t, c.Append(u, readEvents(u, "a", 2), sink.Write))

	// A write that was stored but reported failed.
	lost := readEvents(u, "b", 3)
	err := c.Append(u, lost, func(ctx context.Context, sealed []auditing.Event) error {
		require.NoError(t, sink.Write(ctx, sealed))
		return context.DeadlineExceeded
	})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Equal(t, uint64(2), c.Head().Seq)
	require.ErrorIs(t, c.Append(u, readEvents(u, "c", 1), sink.Write), auditing.ErrConflict)
	require.NoError(t, c.ResyncPostgres(ctx, pool))
	require.Equal(t, uint64(5), c.Head().Seq)
	require.NoError(t, c.Append(u, readEvents(u, "c", 1), sink.Write))
	require.True(t, verifyPostgres(t, pool, mac, []auditing.Checkpoint{c.Head()}).OK())

	// A row at the next seq that does not chain from the head (a forgery,
	// or a second writer) is not adopted.
	forger := auditing.ResumeChain("s", mac, c.Head().Seq, []byte("not the head"))
	require.NoError(t, forger.Append(u, readEvents(u, "f", 1), sink.Write))
	head := c.Head()
	require.ErrorIs(t, c.Append(u, readEvents(u, "d", 1), sink.Write), auditing.ErrConflict)
	require.ErrorIs(t, c.ResyncPostgres(ctx, pool), auditing.ErrConflict)
	require.Equal(t, head, c.Head())
	// Nor is one sealed with another key.
	other := auditing.ResumeChain("t", newChainMAC(t), 0, nil)
	require.NoError(t, other.Append(u, readEvents(u, "g", 2), sink.Write))
	tc := auditing.NewChain("t", mac)
	require.ErrorIs(t, tc.ResyncPostgres(ctx, pool), auditing.ErrConflict)
	require.Zero(t, tc.Head().Seq)
}

// A checkpoint boundary passed by the events ResyncPostgres adopts is
// checkpointed at the next Append.
func TestResyncPostgresCheckpoints(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newChainMAC(t)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("u")
	c := auditing.NewChain("s", mac)
	var cps []uint64
	c.SetCheckpointFunc(5, func(cp auditing.Checkpoint) { cps = append(cps, cp.Seq) })
	require.NoError(t, c.Append(u, readEvents(u, "a", 3), sink.Write))
	err := c.Append(u, readEvents(u, "b", 3), func(ctx context.Context, sealed []auditing.Event) error {
		require.NoError(t, sink.Write(ctx, sealed)) // stored, but reported lost: seqs 4-6
		return context.DeadlineExceeded
	})
	require.Error(t, err)
	require.NoError(t, c.ResyncPostgres(ctx, pool))
	require.Empty(t, cps)
	require.NoError(t, c.Append(u, readEvents(u, "c", 1), sink.Write))
	require.Equal(t, []uint64{7}, cps, "the boundary at 5, passed while resyncing")
}
