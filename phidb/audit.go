package phidb

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/codec"
)

// ErrNoActor is returned by every operation on PHI (the struct operations,
// Get, Select, Lookup) when the context names no actor and the pool has no
// system actor: phidb does not read or write PHI for nobody.
var ErrNoActor = errors.New("phidb: no actor in the context: set one with auditing.WithActor, or Config.SystemActor for background jobs")

// auditor records the events of one pool in one hash-chained stream.
type auditor struct {
	chain *auditing.Chain
	pg    *auditing.PostgresSink // nil unless Config.AuditPostgres
	pool  *pgxpool.Pool          // where pg writes the events of reads
	sink  auditing.Sink          // Config.AuditSink, may be nil

	bufMu   sync.Mutex
	buffers [][]auditing.Event // free buffers for newEvents, at most maxFreeBuffers
}

// newEvents returns one event per primary key in pks, as
// auditing.NewEvents does, and a func to call once they are recorded (or
// not) and no longer used. Without Config.AuditSink the only sink is
// PostgreSQL, which keeps nothing of the events it is given, so large
// batches are built in reused buffers.
func (a *auditor) newEvents(ctx context.Context, action auditing.Action, table string, columns []string, pks []string) ([]auditing.Event, func()) {
	if a.sink != nil || len(pks) < minPooledEvents {
		return auditing.NewEvents(ctx, action, table, columns, pks...), func() {}
	}
	template := auditing.NewEvents(ctx, action, table, columns, "")[0]
	events := slices.Grow(a.buffer()[:0], len(pks))[:len(pks)]
	for i, pk := range pks {
		events[i] = template
		events[i].PK = pk
	}
	return events, func() { a.release(events) }
}

// buffer returns a free buffer for a large batch of events, or nil; only
// without Config.AuditSink, whose sink might keep the events it is given.
func (a *auditor) buffer() []auditing.Event {
	if a.sink != nil {
		return nil
	}
	var buf []auditing.Event
	a.bufMu.Lock()
	if n := len(a.buffers); n > 0 {
		buf, a.buffers = a.buffers[n-1], a.buffers[:n-1]
	}
	a.bufMu.Unlock()
	return buf
}

// release takes back a buffer that events, recorded and no longer used,
// came from (see buffer).
func (a *auditor) release(events []auditing.Event) {
	if a.sink != nil {
		return
	}
	clear(events) // drop the strings they point to
	if cap(events) > maxPooledEvents {
		return
	}
	a.bufMu.Lock()
	if len(a.buffers) < maxFreeBuffers {
		a.buffers = append(a.buffers, events[:0])
	}
	a.bufMu.Unlock()
}

// Sizes of the batches of events that newEvents builds in reused buffers,
// and how many free buffers an auditor keeps (for as many concurrent large
// reads): at most 2 × 16,384 events of 296 bytes, 9.7 MB.
const (
	minPooledEvents = 256
	maxPooledEvents = 16_384
	maxFreeBuffers  = 2
)

// record appends events to the chain and stores them, all under the chain's
// lock. With tx, the PostgreSQL events go into tx and tx commits inside the
// lock, so the stored order is the sequence order and a failed commit leaves
// no gap in the chain.
//
// The connection is acquired before the chain's lock is taken: a lock holder
// waiting for a pool connection held by a transaction that waits for the lock
// would deadlock.
//
// Without tx, via is the connection to store the events through, if the
// caller holds one (nil: one from the pool).
func (a *auditor) record(ctx context.Context, events []auditing.Event, tx pgx.Tx, via auditing.DB) (err error) {
	if tx != nil {
		// Whatever fails from here on, the transaction does not commit
		// without its events: roll it back (a no-op once committed).
		defer func() {
			if err != nil && !errors.Is(err, ErrPartialAudit) {
				rctx, cancel := detached(ctx)
				defer cancel()
				_ = tx.Rollback(rctx)
			}
		}()
		// Deferred constraints run now, outside the chain's lock: at COMMIT,
		// under it, they could wait for a transaction that waits for the lock.
		if _, err := tx.Exec(ctx, "SET CONSTRAINTS ALL IMMEDIATE"); err != nil {
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "25P02" { // an earlier statement failed
				return pgx.ErrTxCommitRollback
			}
			return err
		}
	}
	var db auditing.DB = tx
	if tx == nil && via != nil {
		db = via
	} else if a.pg != nil && tx == nil {
		conn, err := a.pool.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("phidb: recording audit events: %w", err)
		}
		defer conn.Release()
		db = conn
	}
	var own auditing.DB // the connection to resync through: not the rolled-back tx
	if tx == nil {
		own = db
	}
	write := func(ctx context.Context, sealed []auditing.Event) error {
		return a.store(ctx, tx, func(ctx context.Context) error { return a.pg.WriteIn(ctx, db, sealed) },
			func() []auditing.Event { return sealed })
	}
	err = a.chain.Append(ctx, events, write)
	if a.resyncAfter(ctx, own, err) && tx == nil {
		// The chain now continues after the stored events: once more.
		err = a.chain.Append(ctx, events, write)
	}
	return err
}

// recordBatch appends a batch of read events sealed ahead (see readAudit)
// and stores them, as record does without a transaction.
func (a *auditor) recordBatch(ctx context.Context, b *auditing.Batch) error {
	var db auditing.DB
	if a.pg != nil {
		conn, err := a.pool.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("phidb: recording audit events: %w", err)
		}
		defer conn.Release()
		db = conn
	}
	err := a.chain.AppendBatch(ctx, b, func(ctx context.Context, b *auditing.Batch) error {
		return a.store(ctx, nil, func(ctx context.Context) error { return a.pg.WriteBatchIn(ctx, db, b) }, b.Events)
	})
	a.resyncAfter(ctx, db, err)
	return err
}

// errSinkPanicked is what a panic of Config.AuditSink turns into. The
// panic's value is dropped: it could quote the events.
var errSinkPanicked = errors.New("the audit sink panicked")

// writeSink hands events to sink, turning a panic into errSinkPanicked.
func writeSink(ctx context.Context, sink auditing.Sink, events []auditing.Event) (err error) {
	defer func() {
		if recover() != nil {
			err = errSinkPanicked
		}
	}()
	return sink.Write(ctx, events)
}

// ErrPartialAudit is returned when an operation's events were recorded in
// phidb_audit but the other audit sink (Config.AuditSink) then failed. For
// a write, the change is committed, with its events in phidb_audit; the
// sink misses them (its verifier reports them missing). A read returns no
// rows.
var ErrPartialAudit = errors.New("phidb: recorded in phidb_audit, but the audit sink failed")

// store writes sealed events, under the chain's lock, and commits tx if
// there is one. pgWrite stores them in phidb_audit (in tx, if any) and
// events returns them for Config.AuditSink.
//
// With phidb_audit, it is the record: the events go there, tx commits with
// them, and only then does the other sink get them, so that it never holds
// events of a change that rolled back; if it fails, the events stay in the
// chain (auditing.Stored) and the error matches ErrPartialAudit. Without
// phidb_audit, the sink is the record and gets the events before tx
// commits; if the commit then fails, they stay in the chain too (the sink
// has them), and the caller records the failure after them.
//
// A failed write rolls tx back here, under the chain's lock: its audit rows
// must not hold their sequence numbers while the next Append writes them
// again.
func (a *auditor) store(ctx context.Context, tx pgx.Tx, pgWrite func(context.Context) error, events func() []auditing.Event) (err error) {
	ctx, cancel := detached(ctx)
	defer cancel()
	if tx != nil {
		defer func() {
			if err != nil {
				_ = tx.Rollback(ctx) // after a failed or done commit, a no-op
			}
		}()
	}
	if a.pg != nil {
		if err := pgWrite(ctx); err != nil {
			return fmt.Errorf("phidb: recording audit events: %w", err)
		}
		if tx != nil {
			if err := tx.Commit(ctx); err != nil {
				return err
			}
		}
		if a.sink != nil {
			if err := writeSink(ctx, a.sink, events()); err != nil {
				return auditing.Stored(fmt.Errorf("%w: %w", ErrPartialAudit, err))
			}
		}
		return nil
	}
	if a.sink != nil {
		if err := writeSink(ctx, a.sink, events()); err != nil {
			return fmt.Errorf("phidb: recording audit events: %w", err)
		}
	}
	if tx != nil {
		if err := tx.Commit(ctx); err != nil {
			return auditing.Stored(err)
		}
	}
	return nil
}

// auditWriteTimeout bounds a write of audit events, which does not stop
// when the operation's context ends (see detached).
const auditWriteTimeout = 30 * time.Second

// detached returns a context for writing audit events that the operation's
// context cannot cancel once the write began, so that a cancellation does
// not leave the write's outcome unknown (events stored while the chain
// thinks they are not). It keeps ctx's values and has auditWriteTimeout.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), auditWriteTimeout)
}

// resyncAfter looks at the error of a write of events to phidb_audit. If
// it says that their sequence numbers are stored already (a write whose
// outcome was unknown did commit), it moves the chain's head past the
// stored events that continue it (auditing.Chain.ResyncPostgres), through
// db if not nil, so that later operations record again; the pool's stream
// has no other writer. It reports whether the head moved. It is best
// effort, and bounded in time: the operation fails anyway.
func (a *auditor) resyncAfter(ctx context.Context, db auditing.DB, err error) bool {
	if err == nil || a.pg == nil || !errors.Is(err, auditing.ErrConflict) || errors.Is(err, ErrPartialAudit) {
		return false // (an ErrConflict of the other sink is that sink's business)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), failureRecordTimeout)
	defer cancel()
	if db == nil { // acquired before the chain's lock is taken
		conn, aerr := a.pool.Acquire(ctx)
		if aerr != nil {
			return false
		}
		defer conn.Release()
		db = conn
	}
	before := a.chain.Head().Seq
	return a.chain.ResyncPostgres(ctx, db) == nil && a.chain.Head().Seq != before
}

// actor returns ctx carrying the actor of the operation: the context's, or
// the pool's system actor. Without either, the operation is refused, and the
// refusal is recorded.
func (e *engine) actor(ctx context.Context, action auditing.Action, table string) (context.Context, error) {
	if _, ok := auditing.ActorFrom(ctx); ok {
		return ctx, nil
	}
	if e.cfg.SystemActor != nil {
		return auditing.WithActor(ctx, *e.cfg.SystemActor), nil
	}
	e.recordFailure(ctx, action, table, "", auditing.OutcomeDenied, "no actor", nil)
	return nil, ErrNoActor
}

// recordFailure records one event for an operation that was refused or
// failed. It is best effort: the caller returns the operation's own error.
// via is as for recordFailureEvent.
func (e *engine) recordFailure(ctx context.Context, action auditing.Action, table, pk string, outcome auditing.Outcome, reason string, via auditing.DB) {
	if e.audit == nil {
		return
	}
	ev := auditing.NewEvents(ctx, action, table, nil, pk)
	ev[0].Outcome, ev[0].Reason = outcome, reason
	e.recordFailureEvent(ctx, ev[0], via)
}

// recordFailureEvent records ev, the event of a refused or failed operation,
// through via if the caller holds a connection that is free (nil: one from
// the pool). It is recorded even if the operation's context ended, but
// without waiting forever for a pool connection: inside a Tx on a pool of
// one connection there is none to get.
func (e *engine) recordFailureEvent(ctx context.Context, ev auditing.Event, via auditing.DB) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), failureRecordTimeout)
	defer cancel()
	_ = e.audit.record(ctx, []auditing.Event{ev}, nil, via)
}

// failureRecordTimeout bounds the recording of a refused or failed
// operation's event.
const failureRecordTimeout = 5 * time.Second

// failure classifies err for an audit event, by kind only: an error's text
// can quote values.
func failure(err error) (pk, reason string) {
	var fe *codec.FieldError
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &fe):
		pk, reason = fe.PK, fe.Op+" failed"
	case errors.As(err, &pe):
		reason = "SQLSTATE " + pe.Code
	case errors.Is(err, pgx.ErrNoRows):
		reason = "no rows"
	default:
		reason = "error"
	}
	return pk, reason
}

// audited runs do, which writes rows, and records events for them with the
// data change. In a Tx the events wait for its Commit. On a Pool or Conn,
// phidb runs do in a transaction of its own and commits it with the events.
// Without auditing do runs as it is.
func audited(ctx context.Context, q Querier, action auditing.Action, table string, do func(Querier) error, events func() []auditing.Event) error {
	e := q.engine()
	if e.audit == nil {
		return do(q)
	}
	var via auditing.DB // a connection the caller holds, free once its transaction ended
	if c, ok := q.(*Conn); ok {
		via = c.conn
	}
	fail := func(err error) error {
		pk, reason := failure(err)
		e.recordFailure(ctx, action, table, pk, auditing.OutcomeError, reason, via)
		return err
	}
	if t, ok := q.(*Tx); ok {
		if err := do(t); err != nil {
			via = nil // the transaction goes on: not through its connection
			return fail(err)
		}
		t.state.pending = append(t.state.pending, events()...)
		return nil
	}
	var tx *Tx
	var err error
	switch h := q.(type) {
	case *Pool:
		tx, err = h.Begin(ctx)
	case *Conn:
		tx, err = h.Begin(ctx)
	default:
		return fmt.Errorf("phidb: unsupported Querier %T", q)
	}
	if err != nil {
		return fail(err)
	}
	defer tx.tx.Rollback(context.WithoutCancel(ctx))
	if err := do(tx); err != nil {
		_ = tx.tx.Rollback(context.WithoutCancel(ctx)) // give its connection back before recording the failure
		return fail(err)
	}
	if err := e.audit.record(ctx, events(), tx.tx, nil); err != nil {
		if errors.Is(err, ErrPartialAudit) {
			return err // committed, and recorded in phidb_audit
		}
		return fail(err)
	}
	return nil
}

// txState is shared by a transaction and its savepoints: the events of its
// writes, recorded at Commit.
type txState struct {
	pending []auditing.Event
}

// pkText formats a primary-key argument as Schema.PKString formats a field.
func pkText(v any) string {
	switch k := v.(type) {
	case uuid.UUID:
		return k.String()
	case [16]byte:
		return uuid.UUID(k).String()
	case string:
		return strconv.Quote(k)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(rv.Int(), 10)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(rv.Uint(), 10)
	}
	return fmt.Sprintf("%T", v)
}

// AuditStream names the pool's audit stream.
func (p *Pool) AuditStream() string {
	if p.eng.audit == nil {
		return ""
	}
	return p.eng.audit.chain.Stream()
}

// AuditHead returns the newest checkpoint of the pool's audit chain (stream,
// sequence number, head hash), to export where the database cannot alter it.
func (p *Pool) AuditHead() auditing.Checkpoint {
	if p.eng.audit == nil {
		return auditing.Checkpoint{}
	}
	return p.eng.audit.chain.Head()
}
