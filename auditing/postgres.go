package auditing

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/tink-crypto/tink-go/v2/tink"
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
// advisory lock); [Init] runs it. It refuses, with an error naming the
// table, a phidb_audit of an earlier layout (with a seqs or a hashes column): rename or
// export it first.
//
// One row holds one batch: the consecutive events of one Write (or one
// [Batch]) that share stream, time, actor, action, table, columns, purpose,
// client address, request id, outcome and reason, and follow each other in
// the chain. Those shared fields are stored once; the batch holds the events
// with sequence numbers first_seq to last_seq, prev_hash is the PrevHash of
// the first, and last_hash the Hash of the last. The per-event fields are
// packed, in sequence order, in three bytea columns:
//
//   - ids: the 16-byte IDs, one after the other; or, for a batch of more
//     than one event, only the first ID when the others follow from it: the
//     UUIDv7s that [Chain.Append] assigns to a batch share their time bits
//     and count up in their 62 random bits (RFC 9562, method 2), so event i
//     of the batch has the first ID's random bits plus i (modulo 2^62).
//   - pks: a format byte, then either (0x00) each primary key as its byte
//     length (unsigned varint, as encoding/binary's AppendUvarint) followed
//     by its UTF-8 bytes, or (0x01, when every key is the canonical
//     lowercase text of a UUID) each key as the 16 bytes of that UUID.
//   - checks: the last 4 bytes of each event's hash.
//
// The hashes of the events inside a batch are not stored: the chain is
// stored as a unit per batch, and [ReadPostgres] computes them again from
// the events with the audit key. A batch is intact when, chaining from
// prev_hash, the hash computed for its last event is last_hash; the checks
// tell which event of a batch that is not intact was changed first (a
// change escapes its own check with probability 2^-32, and is then
// reported at a later event of the batch). A query reading 10,000 rows with
// UUID primary keys thus costs one row of about 200 kB (20 bytes per
// event), stored out of line by TOAST, without compression: IDs, checks and
// UUID keys are random, and compression would only cost time.
//
// Triggers refuse UPDATE and DELETE (row level) and TRUNCATE (statement
// level) with the error "phidb: <op> on <schema>.<table> refused: the audit
// log is append-only" (SQLSTATE P0001). They stop mistakes and the
// application's role, not the table's owner or a superuser, who can disable
// them: let a migration role own the table and grant the application role
// only INSERT and SELECT. The hash chain, checked by [Verify], is what
// detects tampering by those who can.
const SchemaSQL = `SELECT pg_advisory_xact_lock(7010406352511000801);

DO $do$
BEGIN
	IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('phidb_audit')
			AND attname IN ('seqs', 'hashes') AND NOT attisdropped) THEN
		RAISE EXCEPTION 'phidb: the table phidb_audit has the layout of an earlier phidb version'
			USING HINT = 'rename it (ALTER TABLE phidb_audit RENAME TO phidb_audit_old) and run Init again';
	END IF;
END
$do$;

CREATE TABLE IF NOT EXISTS phidb_audit (
	stream       text        NOT NULL,
	first_seq    bigint      NOT NULL CHECK (first_seq >= 1),
	last_seq     bigint      NOT NULL,
	prev_hash    bytea       NOT NULL,
	event_time   timestamptz NOT NULL,
	actor_id     text        NOT NULL,
	actor_role   text        NOT NULL,
	action       text        NOT NULL,
	table_name   text        NOT NULL,
	column_names text[]      NOT NULL,
	purpose      text        NOT NULL,
	client_addr  text        NOT NULL,
	request_id   text        NOT NULL,
	outcome      text        NOT NULL,
	reason       text        NOT NULL,
	ids          bytea       NOT NULL,
	pks          bytea       NOT NULL,
	checks       bytea       NOT NULL,
	last_hash    bytea       NOT NULL,
	written_at   timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (stream, first_seq),
	CONSTRAINT phidb_audit_batch_shape CHECK (
		last_seq >= first_seq
		AND (octet_length(ids) = 16 * (last_seq - first_seq + 1) OR octet_length(ids) = 16)
		AND octet_length(pks) >= 1
		AND octet_length(checks) = 4 * (last_seq - first_seq + 1)
		AND octet_length(last_hash) >= 4)
);

-- Storage, set once: the packed columns are stored out of line without
-- compression. IDs, checks and UUID keys are random; compressing other keys
-- would cost more time than it saves.
DO $do$
BEGIN
	IF EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'phidb_audit'::regclass
			AND attname IN ('ids', 'pks', 'checks') AND attstorage <> 'e') THEN
		ALTER TABLE phidb_audit ALTER COLUMN ids SET STORAGE EXTERNAL,
			ALTER COLUMN pks SET STORAGE EXTERNAL, ALTER COLUMN checks SET STORAGE EXTERNAL;
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
// Write is one INSERT statement, whatever the number of events: up to 16
// rows (batches of events sharing their fields) as a VALUES list, more as
// unnest of arrays with one element per row.
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
	table, ident := s.table()
	for i := range events {
		if len(events[i].Hash) < checkSize {
			return fmt.Errorf("auditing: writing %s to %s: the event with seq %d has no hash: seal events with a Chain", describe(events), table, events[i].Seq)
		}
	}
	runs := batchRuns(events)
	a := arenas.Get().(*arena)
	defer a.release()
	var err error
	if len(runs) <= maxValuesRows {
		args := make([]any, 0, insertParams*len(runs))
		start := 0
		for _, end := range runs {
			args = appendRowArgs(args, a, events[start:end])
			start = end
		}
		_, err = db.Exec(ctx, insertValuesSQL(ident, len(runs)), args...)
	} else {
		_, err = db.Exec(ctx, insertManySQL(ident), manyRowsArgs(a, events, runs)...)
	}
	if err != nil {
		return writeError(table, describe(events), err)
	}
	return nil
}

// table returns the sink's table and its quoted identifier.
func (s *PostgresSink) table() (string, string) {
	table := s.Table
	if table == "" {
		table = DefaultTable
	}
	return table, pgx.Identifier(strings.Split(table, ".")).Sanitize()
}

// WriteBatch stores the events of a Batch through the sink's DB, as one
// row, without building an Event per row. It is a write function for
// [Chain.AppendBatch], and refuses a batch that AppendBatch is not
// appending.
func (s *PostgresSink) WriteBatch(ctx context.Context, b *Batch) error {
	return s.WriteBatchIn(ctx, s.DB, b)
}

// WriteBatchIn is WriteBatch through db (see [PostgresSink.WriteIn]).
func (s *PostgresSink) WriteBatchIn(ctx context.Context, db DB, b *Batch) error {
	table, ident := s.table()
	switch {
	case b.err != nil:
		return b.err
	case !b.writing:
		return fmt.Errorf("auditing: writing a batch to %s: only Chain.AppendBatch can have a batch written", table)
	case b.n == 0:
		return nil
	case b.tagLen < checkSize:
		return fmt.Errorf("auditing: writing a batch to %s: hashes of %d bytes are too short", table, b.tagLen)
	}
	a := arenas.Get().(*arena)
	defer a.release()
	var p packed
	p.ids = b.first[:]
	if b.strs == nil {
		p.pks = a.alloc(1 + len(b.keys))
		p.pks[0] = pksUUIDs
		copy(p.pks[1:], b.keys)
	} else {
		p.pks = packKeys(a, b.strs)
	}
	p.checks = a.alloc(checkSize * b.n)
	for i := range b.n {
		copy(p.checks[checkSize*i:], b.hash(i)[b.tagLen-checkSize:])
	}
	p.last = b.head
	f := &b.shared
	_, err := db.Exec(ctx, insertValuesSQL(ident, 1),
		f.Stream, int64(b.seq0+1), int64(b.seq0+uint64(b.n)), nonNil(b.prev), b.time, f.Actor.ID, f.Actor.Role, string(f.Action), f.Table,
		nonNil(f.Columns), f.Purpose, f.ClientAddr, f.RequestID, string(f.Outcome), f.Reason,
		p.ids, p.pks, p.checks, p.last)
	if err != nil {
		return writeError(table, fmt.Sprintf("%d events of stream %q, seq %d to %d", b.n, f.Stream, b.seq0+1, b.seq0+uint64(b.n)), err)
	}
	return nil
}

// batchRuns splits events into runs of consecutive events that can share a
// row: same shared fields, same stream and time, consecutive sequence
// numbers, linked hashes of one length. It returns the index where each run
// ends.
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
		len(a.Hash) == len(b.Hash) && a.Time.Equal(b.Time) &&
		a.Actor == b.Actor && a.Action == b.Action && a.Table == b.Table &&
		a.Purpose == b.Purpose && a.ClientAddr == b.ClientAddr && a.RequestID == b.RequestID &&
		a.Outcome == b.Outcome && a.Reason == b.Reason && sameColumns(a.Columns, b.Columns)
}

const insertColumns = `(stream, first_seq, last_seq, prev_hash, event_time, actor_id, actor_role, action, table_name,
	column_names, purpose, client_addr, request_id, outcome, reason, ids, pks, checks, last_hash)`

// insertParams is the number of parameters of one row.
const insertParams = 19

// maxValuesRows is the largest number of rows inserted with a VALUES list
// (one tuple of insertParams parameters per row); more rows go through
// unnest. Each row count is its own prepared statement, so keep it small.
const maxValuesRows = 16

// insertValuesSQL inserts rows rows, each from its own parameters.
func insertValuesSQL(ident string, rows int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO ` + ident + ` ` + insertColumns + `
VALUES `)
	for r := range rows {
		if r > 0 {
			b.WriteString(",\n\t")
		}
		p := r * insertParams
		fmt.Fprintf(&b, `($%d, $%d, $%d, $%d, $%d::timestamptz, $%d, $%d, $%d, $%d, $%d::text[], $%d, $%d, $%d, $%d, $%d, `+
			`$%d::bytea, $%d::bytea, $%d::bytea, $%d::bytea)`,
			p+1, p+2, p+3, p+4, p+5, p+6, p+7, p+8, p+9, p+10, p+11, p+12, p+13, p+14, p+15, p+16, p+17, p+18, p+19)
	}
	return b.String()
}

// insertManySQL inserts one row per element of its array parameters.
func insertManySQL(ident string) string {
	return `INSERT INTO ` + ident + ` ` + insertColumns + `
SELECT stream, first_seq, last_seq, prev_hash, event_time, actor_id, actor_role, action, table_name,
	column_names::text[], purpose, client_addr, request_id, outcome, reason, ids, pks, checks, last_hash
FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bytea[], $5::timestamptz[], $6::text[], $7::text[],
		$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
		$16::bytea[], $17::bytea[], $18::bytea[], $19::bytea[])
	AS u(stream, first_seq, last_seq, prev_hash, event_time, actor_id, actor_role, action, table_name,
		column_names, purpose, client_addr, request_id, outcome, reason, ids, pks, checks, last_hash)`
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

// Formats of the pks column: its first byte.
const (
	pksStrings = 0x00 // each key: uvarint byte length, then the bytes
	pksUUIDs   = 0x01 // each key: the 16 bytes of the UUID it is the canonical text of
)

// packed is the per-event columns of one row, and its last hash.
type packed struct{ ids, pks, checks, last []byte }

// checkSize is the length of an event's check: the last bytes of its hash.
const checkSize = 4

// arena hands out the byte slices of the packed columns of one Write. The
// arenas are pooled: pgx copies the parameters while sending them, so the
// bytes are free again when the statement returns.
type arena struct{ b []byte }

var arenas = sync.Pool{New: func() any { return new(arena) }}

// maxPooledArena is the largest arena kept for reuse: one 10,000-event
// batch with UUID keys takes 200 kB.
const maxPooledArena = 4 << 20

// alloc returns n bytes of the arena. A slice handed out earlier stays
// valid when the arena grows: it keeps the array it was cut from.
func (a *arena) alloc(n int) []byte {
	if cap(a.b)-len(a.b) < n {
		a.b = make([]byte, 0, max(2*cap(a.b), n, 4096))
	}
	b := a.b[len(a.b) : len(a.b)+n : len(a.b)+n]
	a.b = a.b[:len(a.b)+n]
	return b
}

func (a *arena) release() {
	if cap(a.b) <= maxPooledArena {
		a.b = a.b[:0]
		arenas.Put(a)
	}
}

// pack encodes the per-event fields of a run of events (see [SchemaSQL])
// into slices of a.
func pack(a *arena, events []Event) packed {
	n := len(events)
	derived := n > 1
	for i := 1; i < n && derived; i++ {
		derived = events[i].ID == nextID(events[0].ID, uint64(i))
	}
	var p packed
	if derived {
		p.ids = a.alloc(16)
		copy(p.ids, events[0].ID[:])
	} else {
		p.ids = a.alloc(16 * n)
		for i := range events {
			copy(p.ids[16*i:], events[i].ID[:])
		}
	}
	p.pks = a.alloc(1 + 16*n)
	p.pks[0] = pksUUIDs
	for i := range events {
		if !parseUUID((*[16]byte)(p.pks[1+16*i:]), events[i].PK) {
			p.pks = packStrings(a, events)
			break
		}
	}
	p.checks = a.alloc(checkSize * n)
	for i := range events {
		copy(p.checks[checkSize*i:], events[i].Hash[len(events[i].Hash)-checkSize:])
	}
	p.last = events[n-1].Hash
	return p
}

// packStrings encodes the primary keys of events in the pksStrings format.
func packStrings(a *arena, events []Event) []byte {
	keys := make([]string, len(events))
	for i := range events {
		keys[i] = events[i].PK
	}
	return packKeys(a, keys)
}

// packKeys encodes keys in the pksStrings format.
func packKeys(a *arena, keys []string) []byte {
	size := 1
	for _, k := range keys {
		size += uvarintLen(uint64(len(k))) + len(k)
	}
	b := a.alloc(size)[:1]
	b[0] = pksStrings
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
	}
	return b
}

// unpack decodes the per-event columns of a row of n events into events,
// which has length n, and returns a description of what is malformed, or
// "".
func unpack(p packed, events []Event) string {
	n := len(events)
	switch {
	case len(p.ids) == 16*n:
		for i := range events {
			events[i].ID = uuid.UUID(p.ids[16*i:])
		}
	case len(p.ids) == 16:
		first := uuid.UUID(p.ids)
		for i := range events {
			events[i].ID = nextID(first, uint64(i))
		}
	default:
		return "ids"
	}
	if len(p.checks) != checkSize*n {
		return "checks"
	}
	if len(p.last) < checkSize {
		return "last_hash"
	}
	if len(p.pks) == 0 {
		return "pks"
	}
	switch body := p.pks[1:]; p.pks[0] {
	case pksUUIDs:
		if len(body) != 16*n {
			return "pks"
		}
		var b strings.Builder
		b.Grow(36 * n)
		var text [36]byte
		for i := range n {
			b.Write(appendUUID(text[:0], body[16*i:]))
		}
		all := b.String() // one allocation for the keys of the row
		for i := range events {
			events[i].PK = all[36*i : 36*(i+1)]
		}
	case pksStrings:
		all := string(body)
		off := 0
		for i := range events {
			l, k := binary.Uvarint(body[off:])
			if k <= 0 || l > uint64(len(body)-off-k) {
				return "pks"
			}
			off += k
			events[i].PK = all[off : off+int(l)]
			off += int(l)
		}
		if off != len(body) {
			return "pks"
		}
	default:
		return "pks"
	}
	return ""
}

// idRandomMask covers the 62 random bits of the last 8 bytes of a UUIDv7
// (the 2 bits above them are the RFC 9562 variant).
const idRandomMask = 1<<62 - 1

// nextID returns id with i added to its 62 random bits, modulo 2^62: the
// i-th ID after it in a batch filled by fillV7.
func nextID(id uuid.UUID, i uint64) uuid.UUID {
	lo := binary.BigEndian.Uint64(id[8:])
	binary.BigEndian.PutUint64(id[8:], lo&^idRandomMask|(lo+i)&idRandomMask)
	return id
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// parseUUID parses the canonical text of a UUID into u: 36 characters,
// lowercase hexadecimal digits with hyphens after the 8th, 12th, 16th and
// 20th, the only form that appendUUID gives back. It reports whether s is
// such a text; if not, u holds garbage.
func parseUUID(u *[16]byte, s string) bool {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return false
	}
	bad := byte(0)
	for j, i := range uuidHexOffsets {
		hi, lo := unhex[s[i]], unhex[s[i+1]]
		bad |= hi | lo
		u[j] = hi<<4 | lo
	}
	return bad < 0x10
}

// uuidHexOffsets are the offsets of the 16 byte values in a UUID's text.
var uuidHexOffsets = [16]int{0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34}

// unhex maps lowercase hexadecimal digits to their value and every other
// byte to 0xff.
var unhex = func() (t [256]byte) {
	for c := range t {
		switch {
		case '0' <= c && c <= '9':
			t[c] = byte(c - '0')
		case 'a' <= c && c <= 'f':
			t[c] = byte(c - 'a' + 10)
		default:
			t[c] = 0xff
		}
	}
	return t
}()

// appendUUID appends the canonical text of the UUID in the first 16 bytes
// of b.
func appendUUID(dst, b []byte) []byte {
	const digits = "0123456789abcdef"
	for i, c := range b[:16] {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, digits[c>>4], digits[c&0x0f])
	}
	return dst
}

// appendRowArgs appends the parameters of the row of a run of events.
func appendRowArgs(args []any, a *arena, run []Event) []any {
	f, l := &run[0], &run[len(run)-1]
	p := pack(a, run)
	return append(args,
		f.Stream, int64(f.Seq), int64(l.Seq), nonNil(f.PrevHash), f.Time, f.Actor.ID, f.Actor.Role, string(f.Action), f.Table,
		nonNil(f.Columns), f.Purpose, f.ClientAddr, f.RequestID, string(f.Outcome), f.Reason,
		p.ids, p.pks, p.checks, p.last)
}

// rowArrays are the parameters of several rows, one element per row.
type rowArrays struct {
	streams, actorIDs, actorRoles, actions, tables, columns []string
	purposes, addrs, requestIDs, outcomes, reasons          []string
	firstSeqs, lastSeqs                                     []int64
	times                                                   []time.Time
	prevHashes, ids, pks, checks, lasts                     [][]byte
}

func (r *rowArrays) add(a *arena, run []Event, columns string) {
	f, l := &run[0], &run[len(run)-1]
	p := pack(a, run)
	r.streams = append(r.streams, f.Stream)
	r.firstSeqs = append(r.firstSeqs, int64(f.Seq))
	r.lastSeqs = append(r.lastSeqs, int64(l.Seq))
	r.prevHashes = append(r.prevHashes, nonNil(f.PrevHash))
	r.times = append(r.times, f.Time)
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
	r.ids = append(r.ids, p.ids)
	r.pks = append(r.pks, p.pks)
	r.checks = append(r.checks, p.checks)
	r.lasts = append(r.lasts, p.last)
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

func manyRowsArgs(a *arena, events []Event, ends []int) []any {
	var (
		r     rowArrays
		lits  columnsLiteral
		start int
	)
	for _, end := range ends {
		r.add(a, events[start:end], lits.of(events[start].Columns))
		start = end
	}
	return []any{
		r.streams, r.firstSeqs, r.lastSeqs, r.prevHashes, r.times, r.actorIDs, r.actorRoles, r.actions, r.tables,
		r.columns, r.purposes, r.addrs, r.requestIDs, r.outcomes, r.reasons, r.ids, r.pks, r.checks, r.lasts,
	}
}

// writeError describes a failed write by table, stream and sequence
// numbers only. PostgreSQL errors keep their code, message and constraint
// but lose the detail and context fields, which can quote row contents;
// errors that are neither from the server, the network nor the context are
// reduced to their type, since client-side encoding errors can quote
// parameters.
func writeError(table, events string, err error) error {
	what := fmt.Sprintf("auditing: writing %s to %s", events, table)
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

// storedOrder orders the rows of one stream: by sequence number, and rows
// that claim the same first one (possible only without the primary key) in
// a fixed order, so that every reader sees them alike.
const storedOrder = `first_seq, last_seq, ctid`

const selectColumns = `stream, first_seq, last_seq, prev_hash, event_time, actor_id, actor_role, action, table_name,
	column_names, purpose, client_addr, request_id, outcome, reason, ids, pks, checks, last_hash`

// ReadPostgres returns all events of the audit table, ordered by stream and
// sequence number, expanding each stored batch back into one Event per row
// audited. It holds the whole table in memory.
//
// The hashes of the events inside a batch are not stored (see [SchemaSQL]):
// ReadPostgres computes them again with mac, the audit MAC the events were
// sealed with. Pass the keyring's AuditChainMAC, which computes with the
// enabled audit key named by each batch's stored last hash. (A MAC that
// computes with its primary key only, such as AuditMAC, suits a keyring
// whose audit key was never rotated: batches sealed with another key would
// show as changed.)
//
// An event whose computed hash does not end with its stored check was
// changed: it gets the check as its Hash, which [Verify] then reports, and
// so does every later event of its batch. The last event of a batch gets
// the stored last hash, or its check if that is not how the last hash ends.
// So:
//
//   - a changed event shows as altered at its seq (or, with probability
//     2^-32, at a later event of its batch);
//   - a removed batch shows as missing, but an event removed from inside a
//     batch shows as an altered event (the batch no longer ends with its
//     last hash);
//   - a last hash replaced by one of another key makes its whole batch
//     show as altered, from its first event.
//
// With a nil mac, only the first event of each batch has its PrevHash and
// only the last its Hash: enough to list the events, not to verify them.
//
// Rows come back in sequence order whatever their physical order, so
// reordering shows up in PostgreSQL only as events whose contents were
// swapped, which Verify reports as altered.
func ReadPostgres(ctx context.Context, db DB, mac tink.MAC) ([]Event, error) {
	return readPostgres(ctx, db, mac, `SELECT `+selectColumns+` FROM `+DefaultTable+` ORDER BY stream, `+storedOrder)
}

// storedBatch is what readPostgres keeps of a row to compute its events'
// hashes: where its events are, and its hash columns.
type storedBatch struct {
	start, n           int
	prev, checks, last []byte
}

func readPostgres(ctx context.Context, db DB, mac tink.MAC, sql string, args ...any) ([]Event, error) {
	rows, err := db.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	defer rows.Close()
	var (
		events  []Event
		batches []storedBatch
		row     storedRow
	)
	for rows.Next() {
		if err := row.scan(rows); err != nil {
			return nil, err
		}
		start := len(events)
		if events, err = row.expand(events); err != nil {
			return nil, err
		}
		batches = append(batches, storedBatch{start: start, n: len(events) - start, prev: row.prev, checks: row.p.checks, last: row.p.last})
		row = storedRow{} // fresh slices for the next row: the events keep these
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	if err := rehash(events, batches, mac); err != nil {
		return nil, err
	}
	return events, nil
}

// storedRow is one row of the audit table: one batch.
type storedRow struct {
	shared      Event // the shared fields
	first, last int64
	prev        []byte
	p           packed
}

// scan reads the current row of rows (selectColumns).
func (r *storedRow) scan(rows pgx.Rows) error {
	var (
		action, outcome string
		t               time.Time
	)
	sh := &r.shared
	if err := rows.Scan(&sh.Stream, &r.first, &r.last, &r.prev, &t, &sh.Actor.ID, &sh.Actor.Role, &action,
		&sh.Table, &sh.Columns, &sh.Purpose, &sh.ClientAddr, &sh.RequestID, &outcome,
		&sh.Reason, &r.p.ids, &r.p.pks, &r.p.checks, &r.p.last); err != nil {
		return fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	sh.Action, sh.Outcome, sh.Time = Action(action), Outcome(outcome), t.UTC()
	if len(sh.Columns) == 0 {
		sh.Columns = nil
	}
	if len(r.prev) == 0 {
		r.prev = nil
	}
	return nil
}

// expand appends the row's events to dst, without their hashes (see
// rehash), or returns an error if the row is malformed.
func (r *storedRow) expand(dst []Event) ([]Event, error) {
	// Every event has a 4-byte check: a count that the checks do not match
	// is malformed, and is not allocated.
	if r.first < 1 || r.last < r.first || r.last-r.first >= int64(len(r.p.checks)/checkSize) {
		return dst, fmt.Errorf("auditing: reading the audit table: batch of stream %q at seq %d is malformed (seqs)", r.shared.Stream, r.first)
	}
	n := int(r.last - r.first + 1)
	dst = slices.Grow(dst, n)
	batch := dst[len(dst) : len(dst)+n]
	for i := range batch {
		batch[i] = r.shared
		batch[i].Seq = uint64(r.first) + uint64(i)
	}
	if what := unpack(r.p, batch); what != "" {
		return dst, fmt.Errorf("auditing: reading the audit table: batch of stream %q at seq %d is malformed (%s)", r.shared.Stream, r.first, what)
	}
	return dst[:len(dst)+n], nil
}

// keyedMAC is a MAC that computes tags with any of its keys: keys.ChainMAC.
type keyedMAC interface {
	// AppendMACWithKeyOf appends to dst the tag of data computed with the
	// key that computed tag (named by tag's Tink prefix), or with the
	// primary key if no enabled key has that prefix.
	AppendMACWithKeyOf(dst, tag, data []byte) ([]byte, error)
}

// rehash sets PrevHash and Hash of the events of stored batches, computing
// the hashes inside each batch with mac (see ReadPostgres). Batches are
// independent: they are spread over all CPUs.
func rehash(events []Event, batches []storedBatch, mac tink.MAC) error {
	if mac == nil {
		for _, sb := range batches {
			events[sb.start].PrevHash = sb.prev
			events[sb.start+sb.n-1].Hash = sb.last
		}
		return nil
	}
	workers := runtime.GOMAXPROCS(0)
	if len(events) < 4096 {
		workers = 1
	}
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		first error
	)
	for range workers {
		wg.Go(func() {
			h := newBatchHasher(mac)
			for {
				k := int(next.Add(1)) - 1
				if k >= len(batches) {
					return
				}
				sb := batches[k]
				if err := h.rehash(events[sb.start:sb.start+sb.n], &sb, nil); err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// batchHasher computes the hashes of stored batches; one per goroutine.
type batchHasher struct {
	mac tink.MAC
	km  keyedMAC // mac, when it is one
	enc canonicalEncoder
	buf []byte
	tag []byte
}

func newBatchHasher(mac tink.MAC) *batchHasher {
	h := &batchHasher{mac: mac}
	h.km, _ = mac.(keyedMAC)
	return h
}

// rehash sets PrevHash and Hash of the events of one stored batch (see
// ReadPostgres), and, if ok is not nil, whether each event's MAC verifies
// (what Verify would find).
func (h *batchHasher) rehash(batch []Event, sb *storedBatch, ok []bool) error {
	prev := sb.prev
	// The hashes of the batch, in one allocation (sized for the usual tag).
	slab := make([]byte, 0, len(batch)*len(sb.last))
	for i := range batch {
		e := &batch[i]
		e.PrevHash = prev
		h.buf = h.enc.append(append(h.buf[:0], prev...), e)
		var err error
		if h.km != nil {
			h.tag, err = h.km.AppendMACWithKeyOf(h.tag[:0], sb.last, h.buf)
		} else {
			h.tag, err = h.mac.ComputeMAC(h.buf)
		}
		if err != nil {
			return fmt.Errorf("auditing: reading the audit table: computing the hashes of stream %q seq %d: %w", e.Stream, e.Seq, err)
		}
		check := sb.checks[checkSize*i : checkSize*(i+1) : checkSize*(i+1)]
		valid := false
		switch {
		case i == len(batch)-1 && !bytes.Equal(check, sb.last[len(sb.last)-checkSize:]):
			e.Hash = check // the last hash or the last check was replaced
		case i == len(batch)-1:
			e.Hash = sb.last
			if h.km != nil {
				valid = bytes.Equal(h.tag, sb.last)
			} else { // as Verify decides: any enabled key of mac
				valid = h.mac.VerifyMAC(sb.last, h.buf) == nil
			}
		case len(h.tag) >= checkSize && bytes.Equal(h.tag[len(h.tag)-checkSize:], check):
			start := len(slab)
			slab = append(slab, h.tag...) // past the slab's size, a new array: the hashes set keep theirs
			e.Hash = slab[start:len(slab):len(slab)]
			valid = true
		default:
			e.Hash = check // the event was changed: a hash that does not verify
		}
		if ok != nil {
			ok[i] = valid
		}
		prev = e.Hash
	}
	return nil
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
	err := queryRow(ctx, db, `SELECT last_seq, last_hash, event_time
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
