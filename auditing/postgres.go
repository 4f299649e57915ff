package auditing

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// DB is what the PostgreSQL functions of this package run statements
// through: a *pgxpool.Pool, a *pgx.Conn, a pgx.Tx (or phidb's wrappers of
// them).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// DefaultTable is the table [PostgresSink] writes to by default and the
// table [Init], [ReadPostgres] and [LastPostgres] use (resolved through the
// search_path).
const DefaultTable = "phidb_audit"

// SchemaSQL creates the audit table phidb_audit and makes it append-only. It
// is idempotent and safe to run concurrently (it takes a transaction-level
// advisory lock); [Init] runs it.
//
// One row holds one batch: the consecutive events of one Write that share
// stream, actor, action, table, columns, purpose, client address, request id,
// outcome and reason, and follow each other in the chain. Those shared
// fields are stored once; the per-event fields are parallel arrays (ids,
// seqs, times, pks, hashes). prev_hash is the PrevHash of the batch's first
// event; each later event's PrevHash is the hash before it. A query reading
// 10,000 rows thus costs one row of about 1 MB (about 90 bytes per event
// with UUID primary keys), stored out of line by TOAST. ids and hashes, being random, are stored without
// compression; pks, seqs and times are compressed with lz4 where the server
// supports it (PostgreSQL 14 and later, built with lz4), else stored
// without compression too: the default pglz would double the cost of
// writing a large batch.
//
// Triggers refuse UPDATE and DELETE (row level) and TRUNCATE (statement
// level) with the error "phidb: <op> on <schema>.<table> refused: the audit
// log is append-only" (SQLSTATE P0001). They stop mistakes and the
// application's role, not the table's owner or a superuser, who can disable
// them: let a migration role own the table and grant the application role
// only INSERT and SELECT. The hash chain, checked by [Verify], is what
// detects tampering by those who can.
const SchemaSQL = `SELECT pg_advisory_xact_lock(7010406352511000801);

CREATE TABLE IF NOT EXISTS phidb_audit (
	stream       text          NOT NULL,
	first_seq    bigint        NOT NULL CHECK (first_seq >= 1),
	prev_hash    bytea         NOT NULL,
	actor_id     text          NOT NULL,
	actor_role   text          NOT NULL,
	action       text          NOT NULL,
	table_name   text          NOT NULL,
	column_names text[]        NOT NULL,
	purpose      text          NOT NULL,
	client_addr  text          NOT NULL,
	request_id   text          NOT NULL,
	outcome      text          NOT NULL,
	reason       text          NOT NULL,
	ids          uuid[]        NOT NULL,
	seqs         bigint[]      NOT NULL,
	times        timestamptz[] NOT NULL,
	pks          text[]        NOT NULL,
	hashes       bytea[]       NOT NULL,
	written_at   timestamptz   NOT NULL DEFAULT now(),
	PRIMARY KEY (stream, first_seq),
	CONSTRAINT phidb_audit_batch_shape CHECK (
		cardinality(ids) >= 1
		AND cardinality(seqs) = cardinality(ids)
		AND cardinality(times) = cardinality(ids)
		AND cardinality(pks) = cardinality(ids)
		AND cardinality(hashes) = cardinality(ids)
		AND seqs[1] = first_seq)
);

-- Storage, set once: ids and hashes are random, so they are stored without
-- compression; pks, seqs and times use lz4, which is several times faster
-- than the default pglz, or no compression where lz4 is not available.
DO $do$
BEGIN
	IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'phidb_audit'::regclass
			AND attname IN ('ids', 'hashes') AND attstorage <> 'e') THEN
		ALTER TABLE phidb_audit ALTER COLUMN ids SET STORAGE EXTERNAL, ALTER COLUMN hashes SET STORAGE EXTERNAL;
		BEGIN
			EXECUTE 'ALTER TABLE phidb_audit ALTER COLUMN pks SET COMPRESSION lz4,
				ALTER COLUMN seqs SET COMPRESSION lz4, ALTER COLUMN times SET COMPRESSION lz4';
		EXCEPTION WHEN feature_not_supported OR syntax_error THEN
			ALTER TABLE phidb_audit ALTER COLUMN pks SET STORAGE EXTERNAL,
				ALTER COLUMN seqs SET STORAGE EXTERNAL, ALTER COLUMN times SET STORAGE EXTERNAL;
		END;
	END IF;
END
$do$;

CREATE OR REPLACE FUNCTION phidb_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
	RAISE EXCEPTION 'phidb: % on %.% refused: the audit log is append-only', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
		USING HINT = 'audit events are never changed or removed';
	RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS phidb_audit_no_update_delete ON phidb_audit;
CREATE TRIGGER phidb_audit_no_update_delete BEFORE UPDATE OR DELETE ON phidb_audit
	FOR EACH ROW EXECUTE FUNCTION phidb_audit_append_only();

DROP TRIGGER IF EXISTS phidb_audit_no_truncate ON phidb_audit;
CREATE TRIGGER phidb_audit_no_truncate BEFORE TRUNCATE ON phidb_audit
	FOR EACH STATEMENT EXECUTE FUNCTION phidb_audit_append_only();
`

// Init creates the audit table and its triggers if needed (runs
// [SchemaSQL]).
func Init(ctx context.Context, db DB) error {
	if _, err := db.Exec(ctx, SchemaSQL); err != nil {
		return fmt.Errorf("auditing: creating the audit table: %w", err)
	}
	return nil
}

// ErrConflict reports that a write to PostgreSQL collided with events
// already stored for the same stream and first sequence number: either a
// second writer uses the stream, or an earlier write whose outcome was
// unknown did commit. Reset the chain from [LastPostgres] (see
// [Chain.Reset]) after making sure no other writer uses the stream.
var ErrConflict = errors.New("auditing: sequence numbers already stored for this stream")

// PostgresSink stores events in the audit table (see [SchemaSQL]). Each
// Write is one INSERT statement, whatever the number of events, with the
// per-event fields sent as array parameters: up to 16 rows (batches of
// events sharing their fields) as a VALUES list, more as unnest of arrays
// gathered back per row, or one row per event when no two consecutive
// events share their fields.
type PostgresSink struct {
	// DB is what Write runs its statement through.
	DB DB
	// Table is the audit table, optionally schema-qualified ("audit.log");
	// empty means DefaultTable. It must have the layout of SchemaSQL. Init,
	// ReadPostgres and LastPostgres use DefaultTable only.
	Table string
}

// NewPostgresSink returns a sink writing to DefaultTable through db.
func NewPostgresSink(db DB) *PostgresSink { return &PostgresSink{DB: db} }

// Write stores events through the sink's DB.
func (s *PostgresSink) Write(ctx context.Context, events []Event) error {
	return s.WriteIn(ctx, s.DB, events)
}

// WriteIn stores events through db, typically the transaction that changed
// the audited rows, so that the events commit or roll back with it.
//
// A rollback after the chain advanced leaves a gap that [Verify] reports as
// missing events. So when writing in a transaction, commit inside the
// Append's write function, under the chain's lock:
//
//	err := chain.Append(ctx, events, func(ctx context.Context, sealed []auditing.Event) error {
//		if err := sink.WriteIn(ctx, tx, sealed); err != nil {
//			return err
//		}
//		return tx.Commit(ctx)
//	})
//
// This serialises the commits of audited transactions of one stream.
func (s *PostgresSink) WriteIn(ctx context.Context, db DB, events []Event) error {
	if len(events) == 0 {
		return nil
	}
	table := s.Table
	if table == "" {
		table = DefaultTable
	}
	ident := pgx.Identifier(strings.Split(table, ".")).Sanitize()
	runs := batchRuns(events)
	var err error
	switch {
	case len(runs) <= maxValuesRows:
		args := make([]any, 0, 18*len(runs))
		start := 0
		for _, end := range runs {
			args = append(args, oneRowArgs(events[start:end])...)
			start = end
		}
		_, err = db.Exec(ctx, insertValuesSQL(ident, len(runs)), args...)
	case len(runs) == len(events):
		_, err = db.Exec(ctx, insertEachSQL(ident), eachRowArgs(events)...)
	default:
		_, err = db.Exec(ctx, insertManySQL(ident), manyRowsArgs(events, runs)...)
	}
	if err != nil {
		return writeError(table, events, err)
	}
	return nil
}

// batchRuns splits events into runs of consecutive events that can share a
// row: same shared fields, same stream, consecutive sequence numbers and
// linked hashes. It returns the index where each run ends.
func batchRuns(events []Event) []int {
	var ends []int
	for i := 1; i < len(events); i++ {
		if !sameBatch(&events[i-1], &events[i]) {
			ends = append(ends, i)
		}
	}
	return append(ends, len(events))
}

func sameBatch(a, b *Event) bool {
	return a.Stream == b.Stream && b.Seq == a.Seq+1 && bytes.Equal(b.PrevHash, a.Hash) &&
		a.Actor == b.Actor && a.Action == b.Action && a.Table == b.Table &&
		a.Purpose == b.Purpose && a.ClientAddr == b.ClientAddr && a.RequestID == b.RequestID &&
		a.Outcome == b.Outcome && a.Reason == b.Reason && slices.Equal(a.Columns, b.Columns)
}

const insertColumns = `(stream, first_seq, prev_hash, actor_id, actor_role, action, table_name, column_names,
	purpose, client_addr, request_id, outcome, reason, ids, seqs, times, pks, hashes)`

// maxValuesRows is the largest number of rows inserted with a VALUES list
// (one tuple of 18 parameters per row); more rows go through unnest. Each
// row count is its own prepared statement, so keep it small.
const maxValuesRows = 16

// insertValuesSQL inserts rows rows, each from its own 18 parameters.
func insertValuesSQL(ident string, rows int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO ` + ident + ` ` + insertColumns + `
VALUES `)
	for r := range rows {
		if r > 0 {
			b.WriteString(",\n\t")
		}
		p := r * 18
		fmt.Fprintf(&b, `($%d, $%d, $%d, $%d, $%d, $%d, $%d, $%d::text[], $%d, $%d, $%d, $%d, $%d, `+
			`$%d::uuid[], $%d::bigint[], $%d::timestamptz[], $%d::text[], $%d::bytea[])`,
			p+1, p+2, p+3, p+4, p+5, p+6, p+7, p+8, p+9, p+10, p+11, p+12, p+13, p+14, p+15, p+16, p+17, p+18)
	}
	return b.String()
}

// insertManySQL inserts one row per run: the shared fields come as one
// array element per row, the per-event fields as flat arrays with the row
// number of each event, gathered back per row.
func insertManySQL(ident string) string {
	return `INSERT INTO ` + ident + ` ` + insertColumns + `
SELECT r.stream, r.first_seq, r.prev_hash, r.actor_id, r.actor_role, r.action, r.table_name,
	r.column_names::text[], r.purpose, r.client_addr, r.request_id, r.outcome, r.reason,
	e.ids, e.seqs, e.times, e.pks, e.hashes
FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
	WITH ORDINALITY AS r(stream, first_seq, prev_hash, actor_id, actor_role, action, table_name,
		column_names, purpose, client_addr, request_id, outcome, reason, rn)
JOIN (SELECT rn, array_agg(id ORDER BY o) AS ids, array_agg(seq ORDER BY o) AS seqs,
		array_agg(t ORDER BY o) AS times, array_agg(pk ORDER BY o) AS pks, array_agg(h ORDER BY o) AS hashes
	FROM unnest($14::bigint[], $15::uuid[], $16::bigint[], $17::timestamptz[], $18::text[], $19::bytea[])
		WITH ORDINALITY AS x(rn, id, seq, t, pk, h, o)
	GROUP BY rn) e ON e.rn = r.rn`
}

// insertEachSQL inserts one row per event, for batches in which no two
// consecutive events share a row.
func insertEachSQL(ident string) string {
	return `INSERT INTO ` + ident + ` ` + insertColumns + `
SELECT stream, seq, prev_hash, actor_id, actor_role, action, table_name,
	column_names::text[], purpose, client_addr, request_id, outcome, reason,
	ARRAY[id], ARRAY[seq], ARRAY[t], ARRAY[pk], ARRAY[h]
FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
		$14::uuid[], $15::timestamptz[], $16::text[], $17::bytea[])
	AS u(stream, seq, prev_hash, actor_id, actor_role, action, table_name,
		column_names, purpose, client_addr, request_id, outcome, reason, id, t, pk, h)`
}

// arrayLiteral returns the PostgreSQL text[] literal of names: each element
// double-quoted, with backslash and double quote escaped.
func arrayLiteral(names []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := 0; j < len(n); j++ {
			if n[j] == '"' || n[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(n[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// nonNil returns b, or an empty slice for nil (pgx sends nil as NULL).
func nonNil[T any](b []T) []T {
	if b == nil {
		return []T{}
	}
	return b
}

// eventArrays are the per-event parameters. IDs are pgtype.UUID, which pgx
// encodes and decodes directly in every query execution mode; uuid.UUID
// would go through driver.Valuer and sql.Scanner, several times slower.
type eventArrays struct {
	ids    []pgtype.UUID
	seqs   []int64
	times  []time.Time
	pks    []string
	hashes [][]byte
}

func newEventArrays(n int) eventArrays {
	return eventArrays{
		ids:    make([]pgtype.UUID, 0, n),
		seqs:   make([]int64, 0, n),
		times:  make([]time.Time, 0, n),
		pks:    make([]string, 0, n),
		hashes: make([][]byte, 0, n),
	}
}

func (a *eventArrays) add(e *Event) {
	a.ids = append(a.ids, pgtype.UUID{Bytes: e.ID, Valid: true})
	a.seqs = append(a.seqs, int64(e.Seq))
	a.times = append(a.times, e.Time)
	a.pks = append(a.pks, e.PK)
	a.hashes = append(a.hashes, nonNil(e.Hash))
}

func oneRowArgs(events []Event) []any {
	a := newEventArrays(len(events))
	for i := range events {
		a.add(&events[i])
	}
	f := &events[0]
	return []any{
		f.Stream, int64(f.Seq), nonNil(f.PrevHash), f.Actor.ID, f.Actor.Role, string(f.Action), f.Table,
		nonNil(f.Columns), f.Purpose, f.ClientAddr, f.RequestID, string(f.Outcome), f.Reason,
		a.ids, a.seqs, a.times, a.pks, a.hashes,
	}
}

// rowArrays are the shared fields of several rows, one element per row.
type rowArrays struct {
	streams, actorIDs, actorRoles, actions, tables, columns []string
	purposes, addrs, requestIDs, outcomes, reasons          []string
	firstSeqs                                               []int64
	prevHashes                                              [][]byte
}

func (r *rowArrays) add(f *Event, columns string) {
	r.streams = append(r.streams, f.Stream)
	r.firstSeqs = append(r.firstSeqs, int64(f.Seq))
	r.prevHashes = append(r.prevHashes, nonNil(f.PrevHash))
	r.actorIDs = append(r.actorIDs, f.Actor.ID)
	r.actorRoles = append(r.actorRoles, f.Actor.Role)
	r.actions = append(r.actions, string(f.Action))
	r.tables = append(r.tables, f.Table)
	r.columns = append(r.columns, columns)
	r.purposes = append(r.purposes, f.Purpose)
	r.addrs = append(r.addrs, f.ClientAddr)
	r.requestIDs = append(r.requestIDs, f.RequestID)
	r.outcomes = append(r.outcomes, string(f.Outcome))
	r.reasons = append(r.reasons, f.Reason)
}

func (r *rowArrays) args() []any {
	return []any{
		r.streams, r.firstSeqs, r.prevHashes, r.actorIDs, r.actorRoles, r.actions, r.tables,
		r.columns, r.purposes, r.addrs, r.requestIDs, r.outcomes, r.reasons,
	}
}

// columnsLiteral caches the literal of the last columns slice seen: events
// of one query share it.
type columnsLiteral struct {
	last []string
	lit  string
}

func (c *columnsLiteral) of(names []string) string {
	if c.lit == "" || !slices.Equal(c.last, names) {
		c.last, c.lit = names, arrayLiteral(names)
	}
	return c.lit
}

func manyRowsArgs(events []Event, ends []int) []any {
	var (
		rows      rowArrays
		lits      columnsLiteral
		eventRows = make([]int64, 0, len(events))
		a         = newEventArrays(len(events))
		start     int
	)
	for r, end := range ends {
		rows.add(&events[start], lits.of(events[start].Columns))
		for i := start; i < end; i++ {
			eventRows = append(eventRows, int64(r+1))
			a.add(&events[i])
		}
		start = end
	}
	return append(rows.args(), eventRows, a.ids, a.seqs, a.times, a.pks, a.hashes)
}

func eachRowArgs(events []Event) []any {
	var (
		rows rowArrays
		lits columnsLiteral
		a    = newEventArrays(len(events))
	)
	for i := range events {
		rows.add(&events[i], lits.of(events[i].Columns))
		a.add(&events[i])
	}
	return append(rows.args(), a.ids, a.times, a.pks, a.hashes)
}

// writeError describes a failed write by table, stream and sequence
// numbers only. PostgreSQL errors keep their code, message and constraint
// but lose the detail and context fields, which can quote row contents;
// errors that are neither from the server, the network nor the context are
// reduced to their type, since client-side encoding errors can quote
// parameters.
func writeError(table string, events []Event, err error) error {
	what := fmt.Sprintf("auditing: writing %s to %s", describe(events), table)
	var pgErr *pgconn.PgError
	var netErr net.Error
	switch {
	case errors.As(err, &pgErr):
		safe := &pgconn.PgError{
			Severity: pgErr.Severity, SeverityUnlocalized: pgErr.SeverityUnlocalized,
			Code: pgErr.Code, Message: pgErr.Message, SchemaName: pgErr.SchemaName,
			TableName: pgErr.TableName, ColumnName: pgErr.ColumnName,
			DataTypeName: pgErr.DataTypeName, ConstraintName: pgErr.ConstraintName,
		}
		if safe.Code == "23505" && strings.HasSuffix(safe.ConstraintName, "_pkey") {
			return &safeError{msg: what + ": " + ErrConflict.Error() + ": " + safe.Error(), errs: []error{ErrConflict, safe}}
		}
		return &safeError{msg: what + ": " + safe.Error(), errs: []error{safe}}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &netErr), pgconn.Timeout(err):
		return fmt.Errorf("%s: %w", what, err)
	default:
		return &safeError{msg: fmt.Sprintf("%s: client-side error of type %T (message withheld: it can quote parameters)", what, err), errs: []error{err}}
	}
}

// safeError is an error whose message is chosen to carry no event contents
// and which still unwraps to its causes for errors.Is and errors.As.
type safeError struct {
	msg  string
	errs []error
}

func (e *safeError) Error() string   { return e.msg }
func (e *safeError) Unwrap() []error { return e.errs }

const selectColumns = `stream, first_seq, prev_hash, actor_id, actor_role, action, table_name, column_names,
	purpose, client_addr, request_id, outcome, reason, ids, seqs, times, pks, hashes`

// ReadPostgres returns all events of the audit table, ordered by stream and
// sequence number, expanding each stored batch back into one Event per row
// audited. Within a batch, an event's PrevHash is the hash of the event
// before it if their sequence numbers are consecutive, and empty otherwise
// (a gap that Verify reports). It holds the whole table in memory.
//
// Rows come back in sequence order whatever their physical order, so
// reordering shows up in PostgreSQL only as events whose contents were
// swapped, which Verify reports as altered.
func ReadPostgres(ctx context.Context, db DB) ([]Event, error) {
	return readPostgres(ctx, db, `SELECT `+selectColumns+` FROM `+DefaultTable+` ORDER BY stream, first_seq`)
}

func readPostgres(ctx context.Context, db DB, sql string, args ...any) ([]Event, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	defer rows.Close()
	var (
		events []Event
		shared Event
		first  int64
		prev   []byte
		a      eventArrays
	)
	for rows.Next() {
		var action, outcome string
		if err := rows.Scan(&shared.Stream, &first, &prev, &shared.Actor.ID, &shared.Actor.Role, &action,
			&shared.Table, &shared.Columns, &shared.Purpose, &shared.ClientAddr, &shared.RequestID, &outcome,
			&shared.Reason, &a.ids, &a.seqs, &a.times, &a.pks, &a.hashes); err != nil {
			return nil, fmt.Errorf("auditing: reading the audit table: %w", err)
		}
		shared.Action, shared.Outcome = Action(action), Outcome(outcome)
		n := len(a.ids)
		if len(a.seqs) != n || len(a.times) != n || len(a.pks) != n || len(a.hashes) != n {
			return nil, fmt.Errorf("auditing: reading the audit table: batch of stream %q at seq %d has arrays of different lengths", shared.Stream, first)
		}
		if len(shared.Columns) == 0 {
			shared.Columns = nil
		}
		for i := range n {
			e := shared
			e.ID, e.Seq, e.Time, e.PK, e.Hash = uuid.UUID(a.ids[i].Bytes), uint64(a.seqs[i]), a.times[i].UTC(), a.pks[i], a.hashes[i]
			switch {
			case i == 0:
				if len(prev) > 0 {
					e.PrevHash = prev
				}
			case a.seqs[i] == a.seqs[i-1]+1:
				e.PrevHash = a.hashes[i-1]
			}
			events = append(events, e)
		}
		// Fresh slices for the next row: the events keep these.
		shared.Columns, prev, a = nil, nil, eventArrays{}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	return events, nil
}

// LastPostgres returns the head of stream as stored in the audit table: the
// sequence number, hash and time of its last event, to resume the stream
// with [ResumeChain]. It reports false if the stream has no events.
func LastPostgres(ctx context.Context, db DB, stream string) (Checkpoint, bool, error) {
	var (
		seq  int64
		hash []byte
		t    time.Time
	)
	err := queryRow(ctx, db, `SELECT seqs[cardinality(seqs)], hashes[cardinality(hashes)], times[cardinality(times)]
FROM `+DefaultTable+` WHERE stream = $1 ORDER BY first_seq DESC LIMIT 1`, []any{stream}, &seq, &hash, &t)
	if errors.Is(err, pgx.ErrNoRows) {
		return Checkpoint{Stream: stream}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("auditing: reading the head of stream %q: %w", stream, err)
	}
	return Checkpoint{Stream: stream, Seq: uint64(seq), Hash: hash, Time: t.UTC()}, true, nil
}

func queryRow(ctx context.Context, db DB, sql string, args []any, dest ...any) error {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	_, err = pgx.CollectExactlyOneRow(rows, func(r pgx.CollectableRow) (struct{}, error) {
		return struct{}{}, r.Scan(dest...)
	})
	return err
}
