package phidb

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/codec"
	"github.com/phidb/phidb/keys"
)

// Config holds phidb's options; the pgx options stay in the connection
// string or *pgxpool.Config.
type Config struct {
	// Keys holds the data and blind-index keysets. Required.
	Keys *keys.Keyring

	// InsecureAllowUnverifiedTLS accepts a server certificate that is not
	// verified (sslmode=require without sslrootcert). The connection is still
	// encrypted, but anyone on the network path can impersonate the server.
	// Leave it false outside throwaway test setups.
	InsecureAllowUnverifiedTLS bool

	// SystemActor is the actor of operations whose context names none, for
	// background jobs. Nil means such operations fail with ErrNoActor.
	SystemActor *auditing.Actor

	// AuditPostgres records one event per row read or written in the table
	// phidb_audit (create it with auditing.Init or `phidb audit init`) of
	// the pool's own database. Events of writes go in the same transaction
	// as the data change; events of reads are stored before the rows are
	// returned, and if they cannot be, the read fails. The events of a
	// read inside a transaction are stored on another pool connection (a
	// rollback must not erase them), so such pools need MaxConns >= 2.
	AuditPostgres bool
	// AuditSink receives the same events (JSON lines, log/slog, fan-out,
	// or auditing.NewAsync for opt-in asynchronous delivery). With
	// AuditPostgres, phidb_audit is the record: the sink gets the events once
	// the change committed with them, and if it fails then, the operation
	// returns ErrPartialAudit (the change stays committed). Without it, the
	// sink is the record and gets the events before the change commits.
	AuditSink auditing.Sink
	// AuditStream names the pool's hash-chained stream; empty means a new
	// UUIDv7. One writer per stream: never share a name between pools.
	AuditStream string
	// OnCheckpoint, if set, receives the chain head (stream, sequence
	// number, hash) every CheckpointEvery events (default 1000): store it
	// where the database's users cannot reach, so a truncated tail shows.
	OnCheckpoint    func(auditing.Checkpoint)
	CheckpointEvery uint64
}

// engine is what every phidb handle (pool, conn, tx) shares.
type engine struct {
	codec   *codec.Codec
	cfg     Config
	indexes sync.Map // *modelIndex -> *blindindex.Index
	audit   *auditor // nil: auditing is off
}

// Pool is a TLS-only pgx connection pool that encrypts and decrypts the PHI
// fields of tagged structs. Use it where you would use *pgxpool.Pool.
type Pool struct {
	pool *pgxpool.Pool
	eng  *engine
}

// New parses connString as pgxpool.ParseConfig does and calls NewWithConfig.
// A connection string without sslmode means sslmode=verify-full.
func New(ctx context.Context, connString string, cfg Config) (*Pool, error) {
	pc, err := pgxpool.ParseConfig(withDefaultSSLMode(connString))
	if err != nil {
		return nil, fmt.Errorf("phidb: %w", err)
	}
	return NewWithConfig(ctx, pc, cfg)
}

// NewWithConfig creates a pool from a parsed pgx configuration. It refuses,
// before dialing, any configuration that could connect without verified TLS
// 1.2+, and checks every new connection before a password is sent.
func NewWithConfig(ctx context.Context, pc *pgxpool.Config, cfg Config) (*Pool, error) {
	if cfg.Keys == nil {
		return nil, errors.New("phidb: Config.Keys is required")
	}
	if pc == nil || pc.ConnConfig == nil {
		return nil, errors.New("phidb: nil pgxpool.Config; create it with pgxpool.ParseConfig")
	}
	if err := secureConnConfig(&pc.ConnConfig.Config, cfg.InsecureAllowUnverifiedTLS); err != nil {
		return nil, err
	}
	p, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("phidb: %w", err)
	}
	eng := &engine{codec: codec.New(cfg.Keys), cfg: cfg}
	if cfg.AuditPostgres || cfg.AuditSink != nil {
		stream := cfg.AuditStream
		if stream == "" {
			id, err := uuid.NewV7()
			if err != nil {
				p.Close()
				return nil, fmt.Errorf("phidb: naming the audit stream: %w", err)
			}
			stream = id.String()
		}
		a := &auditor{chain: auditing.NewChain(stream, cfg.Keys.AuditChainMAC()), sink: cfg.AuditSink}
		if cfg.AuditPostgres {
			a.pg, a.pool = auditing.NewPostgresSink(p), p
		}
		if cfg.OnCheckpoint != nil {
			every := cfg.CheckpointEvery
			if every == 0 {
				every = 1000
			}
			a.chain.SetCheckpointFunc(every, cfg.OnCheckpoint)
		}
		eng.audit = a
	}
	return &Pool{pool: p, eng: eng}, nil
}

// Querier is what the struct operations (Insert, Get, Select, ...) run on:
// a *Pool, a *Conn or a *Tx. It has an unexported method so that only phidb
// handles, which know the keys, satisfy it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error)
	engine() *engine
}

func (p *Pool) engine() *engine { return p.eng }

// Exec runs sql as pgxpool.Pool.Exec does. Arguments are sent as given:
// seal PHI with the struct operations, not here.
func (p *Pool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return p.pool.Exec(ctx, sql, args...)
}

// Query runs sql as pgxpool.Pool.Query does; the rows are pgx's, with
// encrypted columns as raw envelopes. Use Select to decrypt.
func (p *Pool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return p.pool.Query(ctx, sql, args...)
}

// QueryRow runs sql as pgxpool.Pool.QueryRow does. Use Get to decrypt.
func (p *Pool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return p.pool.QueryRow(ctx, sql, args...)
}

// SendBatch sends a pgx batch as pgxpool.Pool.SendBatch does.
func (p *Pool) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return p.pool.SendBatch(ctx, b)
}

// CopyFrom copies rows as pgxpool.Pool.CopyFrom does. Use InsertMany to
// encrypt tagged structs on the way.
func (p *Pool) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	return p.pool.CopyFrom(ctx, tableName, columnNames, rowSrc)
}

// Begin starts a transaction.
func (p *Pool) Begin(ctx context.Context) (*Tx, error) {
	return p.BeginTx(ctx, pgx.TxOptions{})
}

// BeginTx starts a transaction with the given options.
func (p *Pool) BeginTx(ctx context.Context, opts pgx.TxOptions) (*Tx, error) {
	tx, err := p.pool.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &Tx{tx: tx, eng: p.eng, state: &txState{}}, nil
}

// Acquire takes a connection from the pool; Release it when done.
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &Conn{conn: c, eng: p.eng}, nil
}

// Ping checks that a connection can be acquired and the server answers.
func (p *Pool) Ping(ctx context.Context) error { return p.pool.Ping(ctx) }

// Close closes every connection and waits for acquired ones to be released.
func (p *Pool) Close() { p.pool.Close() }

// Stat returns pgxpool's statistics.
func (p *Pool) Stat() *pgxpool.Stat { return p.pool.Stat() }

// Config returns a copy of the pool's pgx configuration.
func (p *Pool) Config() *pgxpool.Config { return p.pool.Config() }

// Keys returns the keyring the pool encrypts with.
func (p *Pool) Keys() *keys.Keyring { return p.eng.cfg.Keys }

// Conn is a connection acquired from a Pool.
type Conn struct {
	conn *pgxpool.Conn
	eng  *engine
}

func (c *Conn) engine() *engine { return c.eng }

// Release returns the connection to the pool.
func (c *Conn) Release() { c.conn.Release() }

// Exec is pgx's Exec on this connection.
func (c *Conn) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return c.conn.Exec(ctx, sql, args...)
}

// Query is pgx's Query on this connection.
func (c *Conn) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return c.conn.Query(ctx, sql, args...)
}

// QueryRow is pgx's QueryRow on this connection.
func (c *Conn) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return c.conn.QueryRow(ctx, sql, args...)
}

// SendBatch is pgx's SendBatch on this connection.
func (c *Conn) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return c.conn.SendBatch(ctx, b)
}

// CopyFrom is pgx's CopyFrom on this connection.
func (c *Conn) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	return c.conn.CopyFrom(ctx, tableName, columnNames, rowSrc)
}

// Begin starts a transaction on this connection.
func (c *Conn) Begin(ctx context.Context) (*Tx, error) {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &Tx{tx: tx, eng: c.eng, state: &txState{}, conn: c.conn}, nil
}

// Ping checks that the server answers on this connection.
func (c *Conn) Ping(ctx context.Context) error { return c.conn.Ping(ctx) }

// Conn returns the underlying *pgx.Conn. It is the way around phidb, not
// through it: nothing sent on it is encrypted, decrypted or checked.
func (c *Conn) Conn() *pgx.Conn { return c.conn.Conn() }

// Tx is a transaction whose struct operations encrypt and decrypt like the
// pool's. It satisfies pgx.Tx.
type Tx struct {
	tx    pgx.Tx
	eng   *engine
	state *txState      // shared with savepoints
	conn  *pgxpool.Conn // the Conn it began on, which the caller holds; nil for a Pool's
	// savepoint is true for a Tx from Tx.Begin; mark is how many events
	// were pending when it began.
	savepoint bool
	mark      int
}

func (t *Tx) engine() *engine { return t.eng }

// Begin starts a pseudo nested transaction (a savepoint).
func (t *Tx) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := t.tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return &Tx{tx: tx, eng: t.eng, state: t.state, conn: t.conn, savepoint: true, mark: len(t.state.pending)}, nil
}

// Commit commits the transaction. With auditing on, the events of its
// writes are recorded with the commit: with AuditPostgres, they are stored
// in the transaction, both or neither (see Config.AuditSink for the other
// sink). If Commit fails, the transaction is rolled back and the failure
// recorded.
func (t *Tx) Commit(ctx context.Context) error {
	if t.savepoint || t.eng.audit == nil || len(t.state.pending) == 0 {
		return t.tx.Commit(ctx)
	}
	events := t.state.pending
	t.state.pending = nil
	err := t.eng.audit.record(ctx, events, t.tx, nil)
	if err != nil && !errors.Is(err, ErrPartialAudit) {
		// Rolled back (record saw to it): the writes' events may be in a
		// sink already; the failure follows them, in the name of the actor
		// who wrote, and through the caller's connection if it holds one.
		ev := events[0]
		ev.ID, ev.Time, ev.Columns = uuid.Nil, time.Time{}, nil
		ev.PK, ev.Reason = failure(err)
		ev.Outcome = auditing.OutcomeError
		var via auditing.DB
		if t.conn != nil {
			via = t.conn
		}
		t.eng.recordFailureEvent(ctx, ev, via)
	}
	return err
}

// Rollback rolls the transaction back, with the events of its writes;
// after Commit it is a no-op that returns pgx.ErrTxClosed, so it is safe to
// defer.
func (t *Tx) Rollback(ctx context.Context) error {
	err := t.tx.Rollback(ctx)
	if err == nil {
		t.state.pending = t.state.pending[:min(t.mark, len(t.state.pending))]
	}
	return err
}

// CopyFrom is pgx's CopyFrom in this transaction.
func (t *Tx) CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error) {
	return t.tx.CopyFrom(ctx, tableName, columnNames, rowSrc)
}

// SendBatch is pgx's SendBatch in this transaction.
func (t *Tx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.tx.SendBatch(ctx, b)
}

// LargeObjects is pgx's large-object API in this transaction.
func (t *Tx) LargeObjects() pgx.LargeObjects { return t.tx.LargeObjects() }

// Prepare prepares a statement in this transaction's connection.
func (t *Tx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.tx.Prepare(ctx, name, sql)
}

// Exec is pgx's Exec in this transaction.
func (t *Tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.tx.Exec(ctx, sql, args...)
}

// Query is pgx's Query in this transaction.
func (t *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.tx.Query(ctx, sql, args...)
}

// QueryRow is pgx's QueryRow in this transaction.
func (t *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.tx.QueryRow(ctx, sql, args...)
}

// Conn returns the underlying *pgx.Conn. It is the way around phidb, not
// through it: nothing sent on it is encrypted, decrypted or checked.
func (t *Tx) Conn() *pgx.Conn { return t.tx.Conn() }

// dbtx is the interface sqlc generates for pgx/v5 (DBTX), with CopyFrom and
// SendBatch as sqlc emits them when used.
type dbtx interface {
	Exec(context.Context, string, ...interface{}) (pgconn.CommandTag, error)
	Query(context.Context, string, ...interface{}) (pgx.Rows, error)
	QueryRow(context.Context, string, ...interface{}) pgx.Row
	CopyFrom(ctx context.Context, tableName pgx.Identifier, columnNames []string, rowSrc pgx.CopyFromSource) (int64, error)
	SendBatch(context.Context, *pgx.Batch) pgx.BatchResults
}

var (
	_ dbtx    = (*Pool)(nil)
	_ dbtx    = (*Conn)(nil)
	_ dbtx    = (*Tx)(nil)
	_ pgx.Tx  = (*Tx)(nil)
	_ Querier = (*Pool)(nil)
	_ Querier = (*Conn)(nil)
	_ Querier = (*Tx)(nil)
)
