package auditing_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/tink-crypto/tink-go/v2/tink"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/internal/pgtest"
)

func sortEvents(events []auditing.Event) []auditing.Event {
	out := slices.Clone(events)
	slices.SortStableFunc(out, func(a, b auditing.Event) int {
		if c := strings.Compare(a.Stream, b.Stream); c != 0 {
			return c
		}
		return int(a.Seq) - int(b.Seq)
	})
	return out
}

func countRows(t *testing.T, db auditing.DB, where string, args ...any) int {
	t.Helper()
	rows, err := db.Query(context.Background(), "SELECT count(*) FROM phidb_audit "+where, args...)
	require.NoError(t, err)
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int])
	require.NoError(t, err)
	return n
}

// Several streams and batches, among them a 10,000-event batch, a batch
// mixing actors, actions, tables and outcomes, and a Write mixing streams,
// come back from PostgreSQL exactly as sealed and verify.
func TestPostgresRoundTrip(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { assert.NoError(t, auditing.Init(ctx, pool), "Init is idempotent and concurrency-safe") })
	}
	wg.Wait()

	rows, err := pool.Query(ctx, `SELECT attname, attstorage::text, attcompression::text FROM pg_attribute
		WHERE attrelid = 'phidb_audit'::regclass AND attname IN ('ids', 'checks', 'pks') ORDER BY attname`)
	require.NoError(t, err)
	storage, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var name, st, comp string
		err := r.Scan(&name, &st, &comp)
		return name + ":" + st + comp, err
	})
	require.NoError(t, err)
	require.Equal(t, []string{"checks:e", "ids:e", "pks:e"}, storage, "packed columns out of line, uncompressed")

	mac := newMAC(t)
	pg := auditing.NewPostgresSink(pool)
	rec := &recorder{}
	sink := auditing.FanOut(pg, rec)
	a, b, c := auditing.NewChain("pool-a", mac), auditing.NewChain("pool-b", mac), auditing.NewChain("pool-c", mac)

	alice, bob := actorCtx("alice"), actorCtx("bob")
	require.NoError(t, a.Append(alice, readEvents(alice, "a", 3), sink.Write))
	require.NoError(t, b.Append(bob, readEvents(bob, "b", 1), sink.Write))
	require.NoError(t, a.Append(alice, readEvents(alice, "big", 10000), sink.Write))
	require.NoError(t, b.Append(bob, readEvents(bob, "b", 1), sink.Write))
	require.NoError(t, a.Append(alice, readEvents(alice, "a", 5), sink.Write))
	require.NoError(t, b.Append(bob, readEvents(bob, "b", 7), sink.Write))

	// One Append holding five kinds of event: five rows in one statement.
	var mixed []auditing.Event
	mixed = append(mixed, readEvents(alice, "m", 2)...)
	mixed = append(mixed, auditing.NewEvents(bob, auditing.ActionUpdate, "patients", []string{"name"}, "m-2")...)
	mixed = append(mixed, auditing.NewEvents(bob, auditing.ActionDelete, "visits", nil, "v-1", "v-2")...)
	mixed = append(mixed, auditing.NewEvents(bob, auditing.ActionRead, "odd", []string{`we"ird`, `back\slash`, "a,b", "{x}", "NULL", "", "ünï code", " sp "}, "o-1")...)
	denied := auditing.NewEvents(auditing.WithActor(context.Background(), auditing.Actor{ID: "eve"}),
		auditing.ActionLookup, "patients", []string{"ssn"}, "")
	denied[0].Outcome, denied[0].Reason = auditing.OutcomeDenied, "permission"
	mixed = append(mixed, denied...)
	require.NoError(t, c.Append(bob, mixed, sink.Write))
	require.NoError(t, c.Append(bob, readEvents(bob, "c", 2), sink.Write))

	// One Append of events that share nothing: one row per event.
	var each []auditing.Event
	for i := range 5 {
		each = append(each, auditing.NewEvents(auditing.WithActor(ctx, auditing.Actor{ID: fmt.Sprint("user-", i)}),
			auditing.ActionRead, "patients", []string{"x", `q"uote`}, fmt.Sprint("e-", i))...)
	}
	each[2].Columns = nil
	require.NoError(t, c.Append(bob, each, sink.Write))

	// One Write carrying events of two streams, sealed apart.
	d, e := auditing.NewChain("pool-d", mac), auditing.NewChain("pool-e", mac)
	de := readEvents(alice, "d", 3)
	require.NoError(t, d.Append(alice, de[:2], nil))
	require.NoError(t, e.Append(alice, de[2:], nil))
	require.NoError(t, sink.Write(ctx, de))

	// UUID primary keys (stored as 16 bytes), keys that only look like
	// UUIDs, IDs and times set by the caller.
	f := auditing.NewChain("pool-f", mac)
	var uuids []string
	for range 300 {
		uuids = append(uuids, uuid.NewString())
	}
	require.NoError(t, f.Append(alice, auditing.NewEvents(alice, auditing.ActionRead, "patients", []string{"name"}, uuids...), sink.Write))
	lookalikes := auditing.NewEvents(alice, auditing.ActionRead, "patients", []string{"name"}, uuids[0], strings.ToUpper(uuids[1]), "{"+uuids[2]+"}")
	require.NoError(t, f.Append(alice, lookalikes, sink.Write))
	preset := auditing.NewEvents(alice, auditing.ActionRead, "patients", nil, "x", "y", "z")
	preset[0].ID = uuid.New()
	preset[2].Time = time.Date(2020, 1, 2, 3, 4, 5, 6000, time.UTC)
	require.NoError(t, f.Append(alice, preset, sink.Write))

	require.Equal(t, 3, countRows(t, pool, "WHERE stream = 'pool-a'"), "one row per batch")
	require.Equal(t, 4, countRows(t, pool, "WHERE stream = 'pool-f'"), "a batch's events share their time")
	require.Equal(t, 3, countRows(t, pool, "WHERE stream = 'pool-b'"))
	require.Equal(t, 11, countRows(t, pool, "WHERE stream = 'pool-c'"), "mixed batch: 5 rows, unshared: 5")
	require.Equal(t, 2, countRows(t, pool, "WHERE stream IN ('pool-d', 'pool-e')"))

	got, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	want := sortEvents(rec.all())
	require.Len(t, got, 10000+3+5+1+1+7+7+2+5+3+300+3+3)
	require.Equal(t, want, got, "PostgreSQL round trip is exact")

	heads := []auditing.Checkpoint{a.Head(), b.Head(), c.Head(), d.Head(), e.Head(), f.Head()}
	r := auditing.Verify(got, mac, heads)
	require.True(t, r.OK(), r.String())
	require.Equal(t, fmt.Sprintf("intact: %d events, 6 streams", len(got)), r.String())

	for _, h := range heads {
		cp, ok, err := auditing.LastPostgres(ctx, pool, h.Stream)
		require.NoError(t, err)
		require.True(t, ok)
		require.Equal(t, h, cp)
	}
	cp, ok, err := auditing.LastPostgres(ctx, pool, "nobody")
	require.NoError(t, err)
	require.False(t, ok)
	require.Equal(t, auditing.Checkpoint{Stream: "nobody"}, cp)
}

// Init refuses an audit table of the earlier layout, with parallel arrays.
func TestPostgresInitRefusesEarlierLayout(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pgtestDatabase(t))
	require.NoError(t, err)
	defer pool.Close()
	_, err = pool.Exec(ctx, "CREATE TABLE phidb_audit (stream text, first_seq bigint, seqs bigint[])")
	require.NoError(t, err)
	err = auditing.Init(ctx, pool)
	require.ErrorContains(t, err, "the table phidb_audit has the layout of an earlier phidb version")

	// The layout that stored every event's hash.
	_, err = pool.Exec(ctx, "DROP TABLE phidb_audit; CREATE TABLE phidb_audit (stream text, first_seq bigint, hashes bytea)")
	require.NoError(t, err)
	err = auditing.Init(ctx, pool)
	require.ErrorContains(t, err, "the table phidb_audit has the layout of an earlier phidb version")
}

// The triggers refuse UPDATE, DELETE and TRUNCATE; INSERT still works.
func TestPostgresAppendOnly(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newMAC(t)
	c := auditing.NewChain("s", mac)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("u")
	require.NoError(t, c.Append(u, readEvents(u, "p", 3), sink.Write))

	for op, sql := range map[string]string{
		"UPDATE":   "UPDATE phidb_audit SET actor_id = 'mallory'",
		"DELETE":   "DELETE FROM phidb_audit",
		"TRUNCATE": "TRUNCATE phidb_audit",
	} {
		_, err := pool.Exec(ctx, sql)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr, op)
		require.Equal(t, "P0001", pgErr.Code)
		require.Equal(t, "phidb: "+op+" on public.phidb_audit refused: the audit log is append-only", pgErr.Message)
	}
	require.NoError(t, c.Append(u, readEvents(u, "q", 2), sink.Write))
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Len(t, events, 5)
	require.True(t, auditing.Verify(events, mac, []auditing.Checkpoint{c.Head()}).OK())
}

// tamperLog writes stream "s" in batches 1-6, 7-10 and 11-20 and stream
// "t" in one batch of 5, and returns the pool, the MAC and the heads.
func tamperLog(t *testing.T) (*pgxpool.Pool, tink.MAC, []auditing.Checkpoint) {
	t.Helper()
	pool := newPool(t)
	mac := newMAC(t)
	s, tt := auditing.NewChain("s", mac), auditing.NewChain("t", mac)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("u")
	for _, n := range []int{6, 4, 10} {
		require.NoError(t, s.Append(u, readEvents(u, "s", n), sink.Write))
	}
	require.NoError(t, tt.Append(u, readEvents(u, "t", 5), sink.Write))
	return pool, mac, []auditing.Checkpoint{s.Head(), tt.Head()}
}

// Tampering with a copy of the audit rows is detected at the right seq.
func TestPostgresTamperedCopy(t *testing.T) {
	ctx := context.Background()
	pool, mac, heads := tamperLog(t)

	// The per-event columns are packed (see SchemaSQL). The primary keys of
	// tamperLog's rows are "s-0", "s-1", ...: after the format byte, each is
	// 4 bytes (length, then 3 bytes), so the 5th starts at byte 18. Checks
	// are 4 bytes. pg_temp.explicit_ids turns the IDs of a row of n events
	// into one 16-byte ID per event.
	cases := []struct {
		name, sql string
		seq       uint64
		kind      string
	}{
		{"actor id of seq 7 changed", "UPDATE phidb_audit SET actor_id = 'mallory' WHERE stream = 's' AND first_seq = 7", 7, auditing.KindAltered},
		{"pk of seq 15 changed", `UPDATE phidb_audit SET pks = overlay(pks PLACING '\x0c'::bytea || convert_to('someone else', 'UTF8') FROM 18 FOR 4)
			WHERE stream = 's' AND first_seq = 11`, 15, auditing.KindAltered},
		{"id of seq 15 changed", `UPDATE phidb_audit SET ids = overlay(pg_temp.explicit_ids(ids, 10) PLACING uuid_send(gen_random_uuid()) FROM 65 FOR 16)
			WHERE stream = 's' AND first_seq = 11`, 15, auditing.KindAltered},
		{"ids of seqs 16-20 made explicit", `UPDATE phidb_audit SET ids = pg_temp.explicit_ids(ids, 10)
			WHERE stream = 's' AND first_seq = 11`, 0, ""},
		{"time of seqs 11-20 changed", "UPDATE phidb_audit SET event_time = event_time - interval '1 hour' WHERE stream = 's' AND first_seq = 11", 11, auditing.KindAltered},
		{"columns of seqs 7-10 changed", "UPDATE phidb_audit SET column_names = '{name}' WHERE stream = 's' AND first_seq = 7", 7, auditing.KindAltered},
		{"check of seq 8 replaced", "UPDATE phidb_audit SET checks = overlay(checks PLACING substring(checks FROM 9 FOR 4) FROM 5 FOR 4) WHERE stream = 's' AND first_seq = 7", 8, auditing.KindAltered},
		{"last hash of batch 7-10 replaced", "UPDATE phidb_audit SET last_hash = (SELECT last_hash FROM phidb_audit WHERE stream = 's' AND first_seq = 1) WHERE stream = 's' AND first_seq = 7", 10, auditing.KindAltered},
		{"prev hash of batch 7-10 replaced", "UPDATE phidb_audit SET prev_hash = last_hash WHERE stream = 's' AND first_seq = 7", 7, auditing.KindAltered},
		{"pk of seq 10, the last of its batch, changed", `UPDATE phidb_audit SET pks = overlay(pks PLACING convert_to('s-9', 'UTF8') FROM 15 FOR 3)
			WHERE stream = 's' AND first_seq = 7`, 10, auditing.KindAltered},
		{"seq 7 deleted", `UPDATE phidb_audit SET first_seq = 8,
			ids = substring(pg_temp.explicit_ids(ids, 4) FROM 17), pks = overlay(pks PLACING ''::bytea FROM 2 FOR 4),
			checks = substring(checks FROM 5) WHERE stream = 's' AND first_seq = 7`, 7, auditing.KindMissing},
		// Splitting a batch around a removed event leaves the first part
		// without its true last hash (batches are chained as a unit), so the
		// break shows at the event before the removed one.
		{"seq 15 deleted", `INSERT INTO phidb_audit (stream, first_seq, last_seq, prev_hash, event_time, actor_id, actor_role, action,
				table_name, column_names, purpose, client_addr, request_id, outcome, reason, ids, pks, checks, last_hash, written_at)
			SELECT stream, 16, 20, prev_hash, event_time, actor_id, actor_role, action,
				table_name, column_names, purpose, client_addr, request_id, outcome, reason,
				substring(pg_temp.explicit_ids(ids, 10) FROM 81), '\x00'::bytea || substring(pks FROM 22), substring(checks FROM 21), last_hash, written_at
			FROM phidb_audit WHERE stream = 's' AND first_seq = 11;
			UPDATE phidb_audit SET last_seq = 14, ids = substring(pg_temp.explicit_ids(ids, 10) FROM 1 FOR 64),
				pks = substring(pks FROM 1 FOR 17), checks = substring(checks FROM 1 FOR 16) WHERE stream = 's' AND first_seq = 11`, 14, auditing.KindAltered},
		{"seq 15 cut out of its batch, the later ones renumbered", `UPDATE phidb_audit SET last_seq = 19,
			ids = overlay(pg_temp.explicit_ids(ids, 10) PLACING ''::bytea FROM 65 FOR 16), pks = overlay(pks PLACING ''::bytea FROM 18 FOR 4),
			checks = overlay(checks PLACING ''::bytea FROM 17 FOR 4) WHERE stream = 's' AND first_seq = 11`, 15, auditing.KindAltered},
		{"batch 7-10 deleted", "DELETE FROM phidb_audit WHERE stream = 's' AND first_seq = 7", 7, auditing.KindMissing},
		{"tail 11-20 deleted", "DELETE FROM phidb_audit WHERE stream = 's' AND first_seq = 11", 11, auditing.KindTruncated},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := pool.Acquire(ctx)
			require.NoError(t, err)
			defer conn.Release()
			schema := fmt.Sprintf("tampered_%d", i)
			for _, sql := range []string{
				"CREATE SCHEMA " + schema,
				"CREATE TABLE " + schema + ".phidb_audit AS SELECT * FROM public.phidb_audit",
				"SET search_path = " + schema,
				explicitIDsSQL,
				tc.sql,
			} {
				_, err := conn.Exec(ctx, sql)
				require.NoError(t, err, sql)
			}
			defer conn.Exec(ctx, "RESET search_path")

			r := verifyPostgres(t, conn, mac, heads)
			if tc.kind == "" {
				require.True(t, r.OK(), r.String())
				return
			}
			requireProblem(t, r, "s", tc.seq, tc.kind)
			require.NotContains(t, r.String(), "mallory")
			require.NotContains(t, r.String(), "someone else")
		})
	}

	// The original is untouched and intact.
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.True(t, auditing.Verify(events, mac, heads).OK())
}

// explicitIDsSQL defines pg_temp.explicit_ids(ids, n), which returns the IDs
// of a row of n events as n 16-byte IDs, expanding a first ID that stands
// for all (event i's ID is the first with i added to its 62 random bits).
const explicitIDsSQL = `CREATE OR REPLACE FUNCTION pg_temp.explicit_ids(ids bytea, n int) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
	SELECT CASE WHEN octet_length(ids) = 16 * n THEN ids ELSE (
		SELECT string_agg(substring(ids FROM 1 FOR 8) || int8send((lo & ~x'3fffffffffffffff'::bigint)
			| (((lo & x'3fffffffffffffff'::bigint) + i) & x'3fffffffffffffff'::bigint)), ''::bytea ORDER BY i)
		FROM generate_series(0, n - 1) AS i,
			LATERAL (SELECT ('x' || encode(substring(ids FROM 9 FOR 8), 'hex'))::bit(64)::bigint AS lo) AS l)
	END
$$`

// A superuser (or the table owner) can disable the triggers; the chain
// still gives them away.
func TestPostgresTamperedWithTriggersDisabled(t *testing.T) {
	ctx := context.Background()
	pool, mac, heads := tamperLog(t)
	for _, sql := range []string{
		"ALTER TABLE phidb_audit DISABLE TRIGGER ALL",
		"UPDATE phidb_audit SET actor_id = 'mallory' WHERE stream = 's' AND first_seq = 7",
		"DELETE FROM phidb_audit WHERE stream = 't'",
		"ALTER TABLE phidb_audit ENABLE TRIGGER ALL",
	} {
		_, err := pool.Exec(ctx, sql)
		require.NoError(t, err, sql)
	}
	r := verifyPostgres(t, pool, mac, heads)
	require.Len(t, r.Problems, 2, r.String())
	require.Equal(t, auditing.Problem{Stream: "s", Seq: 7, Kind: auditing.KindAltered, Detail: r.Problems[0].Detail}, r.Problems[0])
	require.Equal(t, auditing.Problem{Stream: "t", Seq: 1, Kind: auditing.KindTruncated, Detail: r.Problems[1].Detail}, r.Problems[1])
	require.Equal(t, "stream s: first broken at seq 7: altered (the MAC does not verify: a field of the event was changed, or its hash replaced)\n"+
		"stream t: first broken at seq 1: truncated (a checkpoint records seq 5 but the stream has no events)", r.String())
}

// A restarted process resumes its stream from the table.
func TestPostgresResume(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newMAC(t)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("u")

	first := auditing.NewChain("pool-1", mac)
	for _, n := range []int{3, 1, 4} {
		require.NoError(t, first.Append(u, readEvents(u, "a", n), sink.Write))
	}
	cp, ok, err := auditing.LastPostgres(ctx, pool, "pool-1")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, first.Head(), cp)

	second := auditing.ResumeChain("pool-1", mac, cp.Seq, cp.Hash)
	require.Equal(t, cp.Seq, second.Head().Seq)
	more := readEvents(u, "b", 5)
	require.NoError(t, second.Append(u, more, sink.Write))
	require.Equal(t, uint64(9), more[0].Seq)
	require.Equal(t, cp.Hash, more[0].PrevHash)

	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Len(t, events, 13)
	r := verifyPostgres(t, pool, mac, []auditing.Checkpoint{cp, second.Head()})
	require.True(t, r.OK(), r.String())
}

// Writing in the caller's transaction: commit inside the write function
// keeps the chain whole; a rollback after Append returned leaves a gap.
func TestPostgresWriteInTransaction(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	_, err := pool.Exec(ctx, "CREATE TABLE patients (id text PRIMARY KEY)")
	require.NoError(t, err)
	mac := newMAC(t)
	c := auditing.NewChain("tx", mac)
	sink := auditing.NewPostgresSink(nil) // only WriteIn is used
	u := actorCtx("u")

	insert := func(id string, fail bool) error {
		tx, err := pool.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, "INSERT INTO patients VALUES ($1)", id); err != nil {
			return err
		}
		events := auditing.NewEvents(u, auditing.ActionCreate, "patients", []string{"id"}, id)
		return c.Append(ctx, events, func(ctx context.Context, sealed []auditing.Event) error {
			if err := sink.WriteIn(ctx, tx, sealed); err != nil {
				return err
			}
			if fail {
				return errors.New("the application gave up")
			}
			return tx.Commit(ctx)
		})
	}
	require.NoError(t, insert("p1", false))
	require.Error(t, insert("p2", true))
	require.NoError(t, insert("p3", false))
	require.Equal(t, uint64(2), c.Head().Seq, "the failed transaction took no seq")

	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, []string{"p1", "p3"}, []string{events[0].PK, events[1].PK})
	require.True(t, auditing.Verify(events, mac, []auditing.Checkpoint{c.Head()}).OK())

	// The hazard: rolling back after Append returned loses sealed events.
	tx, err := pool.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Append(ctx, readEvents(u, "lost", 2), func(ctx context.Context, sealed []auditing.Event) error {
		return sink.WriteIn(ctx, tx, sealed)
	}))
	require.NoError(t, tx.Rollback(ctx))
	require.NoError(t, c.Append(u, readEvents(u, "after", 1), auditing.NewPostgresSink(pool).Write))
	events, err = auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	requireProblem(t, verifyPostgres(t, pool, mac, nil), "tx", 3, auditing.KindMissing)
}

// A second writer on the same stream is refused by the primary key; Reset
// from the table recovers.
func TestPostgresConflict(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newMAC(t)
	sink := auditing.NewPostgresSink(pool)
	u := actorCtx("u")
	one := auditing.NewChain("shared", mac)
	require.NoError(t, one.Append(u, readEvents(u, "one", 3), sink.Write))

	two := auditing.NewChain("shared", mac) // wrong: should have resumed
	err := two.Append(u, readEvents(u, "two-secret-pk", 2), sink.Write)
	require.ErrorIs(t, err, auditing.ErrConflict)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "23505", pgErr.Code)
	require.Empty(t, pgErr.Detail, "the detail quotes the key: dropped")
	require.NotContains(t, err.Error(), "two-secret-pk")
	require.Contains(t, err.Error(), `2 events of stream "shared", seq 1 to 2 to phidb_audit`)
	require.Zero(t, two.Head().Seq)

	cp, ok, err := auditing.LastPostgres(ctx, pool, "shared")
	require.NoError(t, err)
	require.True(t, ok)
	two.Reset(cp.Seq, cp.Hash)
	require.NoError(t, two.Append(u, readEvents(u, "two", 2), sink.Write))
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Len(t, events, 5)
	require.True(t, auditing.Verify(events, mac, []auditing.Checkpoint{two.Head()}).OK())
}

func TestPostgresSinkErrorsAndTable(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newMAC(t)
	u := actorCtx("secret-actor")
	events := readEvents(u, "secret-pk", 2)
	require.NoError(t, auditing.NewChain("s", mac).Append(u, events, nil))

	missing := &auditing.PostgresSink{DB: pool, Table: "no_such_table"}
	err := missing.Write(ctx, events)
	var pgErr *pgconn.PgError
	require.ErrorAs(t, err, &pgErr)
	require.Equal(t, "42P01", pgErr.Code)
	require.Contains(t, err.Error(), "no_such_table")
	require.NotContains(t, err.Error(), "secret-pk")
	require.NotContains(t, err.Error(), "secret-actor")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, auditing.NewPostgresSink(pool).Write(cctx, events), context.Canceled)

	// Another table with the same layout, schema-qualified.
	for _, sql := range []string{
		"CREATE SCHEMA audit",
		"CREATE TABLE audit.log (LIKE public.phidb_audit INCLUDING ALL)",
	} {
		_, err := pool.Exec(ctx, sql)
		require.NoError(t, err)
	}
	other := &auditing.PostgresSink{DB: pool, Table: "audit.log"}
	require.NoError(t, other.Write(ctx, events))
	require.NoError(t, auditing.NewPostgresSink(pool).Write(ctx, nil))
	rows, err := pool.Query(ctx, "SELECT count(*) FROM audit.log")
	require.NoError(t, err)
	n, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[int])
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Zero(t, countRows(t, pool, ""))
}

// Concurrent appenders through a pool: everything is stored and verifies.
func TestPostgresConcurrent(t *testing.T) {
	ctx := context.Background()
	pool := newPool(t)
	mac := newMAC(t)
	c := auditing.NewChain("busy", mac)
	sink := auditing.NewPostgresSink(pool)
	var (
		mu    sync.Mutex
		total int
		wg    sync.WaitGroup
	)
	for g := range 8 {
		wg.Go(func() {
			u := actorCtx(fmt.Sprint("user", g))
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for range 25 {
				n := 1 + rng.IntN(50)
				if !assert.NoError(t, c.Append(u, readEvents(u, "p", n), sink.Write)) {
					return
				}
				mu.Lock()
				total += n
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	events, err := auditing.ReadPostgres(ctx, pool, mac)
	require.NoError(t, err)
	require.Len(t, events, total)
	r := auditing.Verify(events, mac, []auditing.Checkpoint{c.Head()})
	require.True(t, r.OK(), r.String())
	require.Equal(t, 200, countRows(t, pool, ""))
}

var (
	_ auditing.DB = (*pgxpool.Pool)(nil)
	_ auditing.DB = (*pgx.Conn)(nil)
	_ auditing.DB = pgx.Tx(nil)
)

// Every pgx query execution mode works, the simple protocol (PgBouncer in
// transaction mode) included, on all three insert paths (VALUES, unnest
// gathered per row, one row per event).
func TestPostgresQueryExecModes(t *testing.T) {
	ctx := context.Background()
	connString := pgtestDatabase(t)
	for _, mode := range []pgx.QueryExecMode{
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec,
		pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol,
	} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg, err := pgxpool.ParseConfig(connString)
			require.NoError(t, err)
			cfg.ConnConfig.DefaultQueryExecMode = mode
			pool, err := pgxpool.NewWithConfig(ctx, cfg)
			require.NoError(t, err)
			defer pool.Close()
			require.NoError(t, auditing.Init(ctx, pool))

			mac := newMAC(t)
			stream := "mode-" + mode.String()
			c := auditing.NewChain(stream, mac)
			sink := auditing.NewPostgresSink(pool)
			u := actorCtx("u")
			require.NoError(t, c.Append(u, readEvents(u, `p"\`, 50), sink.Write)) // one row
			mixed := append(readEvents(u, "a", 2), readEvents(actorCtx("v"), "b", 2)...)
			require.NoError(t, c.Append(u, mixed, sink.Write)) // two rows
			each := append(readEvents(u, "c", 1), readEvents(actorCtx("v"), "d", 1)...)
			each[1].Columns = []string{`q"uote`, `b\s`, "{}", "NULL"}
			require.NoError(t, c.Append(u, each, sink.Write)) // one row per event
			var many []auditing.Event
			for i := range 20 {
				many = append(many, readEvents(actorCtx(fmt.Sprint("user", i)), "m", 2)...)
			}
			many[7].Columns = []string{`q"uote`, ""}
			require.NoError(t, c.Append(u, many, sink.Write)) // 21 rows through unnest

			events, err := auditing.ReadPostgres(ctx, pool, mac)
			require.NoError(t, err)
			var mine []auditing.Event
			for _, e := range events {
				if e.Stream == stream {
					mine = append(mine, e)
				}
			}
			require.Len(t, mine, 96)
			require.Equal(t, each[1], mine[55])
			require.Equal(t, many, mine[56:])
			r := auditing.Verify(mine, mac, []auditing.Checkpoint{c.Head()})
			require.True(t, r.OK(), r.String())
			cp, ok, err := auditing.LastPostgres(ctx, pool, stream)
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, c.Head(), cp)
		})
	}
}

func pgtestDatabase(t *testing.T) string {
	t.Helper()
	return pgtest.NewDatabase(t)
}

// verifyPostgres checks the audit table of db both ways, Verify of what
// ReadPostgres returns and VerifyPostgres, which must agree, and returns
// the report.
func verifyPostgres(t *testing.T, db auditing.DB, mac tink.MAC, cps []auditing.Checkpoint) auditing.Report {
	t.Helper()
	ctx := context.Background()
	events, err := auditing.ReadPostgres(ctx, db, mac)
	require.NoError(t, err)
	want := auditing.Verify(events, mac, slices.Clone(cps))
	got, err := auditing.VerifyPostgres(ctx, db, mac, slices.Clone(cps))
	require.NoError(t, err)
	require.Equal(t, want, got, "VerifyPostgres and Verify(ReadPostgres) agree")
	return got
}
