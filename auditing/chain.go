package auditing

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/tink-crypto/tink-go/v2/tink"
)

// Checkpoint is the head of a stream: its last sequence number, the hash of
// that event and the event's time. Checkpoints written to a second sink let
// [Verify] detect a stream whose tail was cut off (see [Chain.SetCheckpointFunc]).
type Checkpoint struct {
	Stream string
	Seq    uint64 // 0 for a stream without events
	Hash   []byte
	Time   time.Time
}

// Chain seals the events of one stream into a hash chain:
//
//	hash_n = MAC(audit key, hash_{n-1} || Canonical(event_n))
//
// with an empty hash_0, so that changing, removing, inserting or reordering
// stored events is detected by [Verify]. The MAC is the keyring's audit MAC
// (keys.Keyring.AuditMAC, or its fast path keys.Keyring.AuditChainMAC,
// which computes the same tags): a 37-byte Tink tag naming the key that
// made it, so the audit key can be rotated without breaking the chain.
//
// A stream must have exactly one Chain writing it at a time, across all
// processes: give every writer (for example every pool of every process) its
// own stream name, or resume a stream with [ResumeChain] only after its
// previous writer stopped. A Chain is safe for concurrent use.
type Chain struct {
	mu     sync.Mutex // held while sealing and writing, so stored order is sequence order
	stream string
	mac    tink.MAC
	seq    uint64
	head   []byte
	time   time.Time
	gen    uint64 // counts the heads published; a Batch sealed against an older one is sealed again
	buf    []byte // canonical encoding buffer, reused
	canon  canonicalEncoder

	headMu  sync.Mutex // guards snap and snapGen, so Head does not wait for writes
	snap    Checkpoint
	snapGen uint64
	cpEvery uint64           // guarded by mu
	cpSeq   uint64           // guarded by mu: the head's seq when checkpoints were last considered
	cpFn    func(Checkpoint) // guarded by mu

	cpMu      sync.Mutex // guards the fields below; never held while calling a checkpoint func
	cpPending *pendingCheckpoint
	cpLast    uint64 // seq of the newest checkpoint handed over for delivery
	cpRunning bool   // a goroutine is delivering checkpoints
}

type pendingCheckpoint struct {
	cp Checkpoint
	fn func(Checkpoint)
}

// NewChain returns a chain for a fresh stream: its first event gets Seq 1
// and an empty PrevHash.
func NewChain(stream string, mac tink.MAC) *Chain {
	return ResumeChain(stream, mac, 0, nil)
}

// ResumeChain returns a chain that continues a stream whose last stored
// event has sequence number lastSeq and hash lastHash, typically as returned
// by [LastPostgres] when a process restarts. lastSeq 0 is a fresh stream.
//
// Resuming from a store whose tail was cut off continues the chain from the
// shortened head, and the cut is then invisible to [Verify] unless it is
// given a checkpoint written elsewhere before the cut.
func ResumeChain(stream string, mac tink.MAC, lastSeq uint64, lastHash []byte) *Chain {
	if !clean(stream) {
		stream = cleanString(stream)
	}
	c := &Chain{stream: stream, mac: mac}
	c.reset(lastSeq, lastHash)
	return c
}

// Reset moves the chain's head to lastSeq and lastHash, as [ResumeChain]
// does for a new chain. Use it after a write whose outcome is unknown (for
// example the connection broke during COMMIT): Append then assumes the write
// failed, and if it did not, the next write of the same sequence numbers
// fails with [ErrConflict]; reset the head from [LastPostgres] to recover
// (or use [Chain.ResyncPostgres]).
func (c *Chain) Reset(lastSeq uint64, lastHash []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reset(lastSeq, lastHash)
}

// ResyncPostgres moves the chain's head past the events of its stream that
// are stored after it in the audit table and continue it: rows that start
// at the next sequence number, chain from the head and whose hashes verify
// under the chain's MAC. It holds the chain's lock meanwhile, so that no
// Append runs in between. Use it after [ErrConflict] when this chain is the
// stream's only writer: a write whose outcome was unknown did commit, and
// the chain continues after it.
//
// Rows that do not continue the head (a forgery, or a second writer on the
// stream) are not adopted: the head stays, and ResyncPostgres returns an
// error wrapping ErrConflict, with the sequence number.
func (c *Chain) ResyncPostgres(ctx context.Context, db DB) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	rows, err := db.Query(ctx, `SELECT `+selectColumns+` FROM `+DefaultTable+`
WHERE stream = $1 AND first_seq > $2 ORDER BY `+storedOrder, c.stream, int64(c.seq))
	if err != nil {
		return fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	defer rows.Close()
	h := newBatchHasher(c.mac)
	seq, head, t := c.seq, c.head, c.time
	var row storedRow
	for rows.Next() {
		if err := row.scan(rows); err != nil {
			return err
		}
		if uint64(row.first) != seq+1 || !bytes.Equal(row.prev, head) {
			break
		}
		events, err := row.expand(nil)
		if err != nil {
			return err
		}
		ok := make([]bool, len(events))
		if err := h.rehash(events, &storedBatch{n: len(events), prev: row.prev, checks: row.p.checks, last: row.p.last}, ok); err != nil {
			return err
		}
		if slices.Contains(ok, false) {
			break
		}
		seq, head, t = uint64(row.last), slices.Clone(row.p.last), row.shared.Time
		row = storedRow{}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("auditing: reading the audit table: %w", err)
	}
	if seq == c.seq {
		return fmt.Errorf("auditing: stream %q: the events stored after seq %d do not continue the chain: %w", c.stream, seq, ErrConflict)
	}
	c.seq, c.head, c.time = seq, head, t
	c.publish()
	return nil
}

func (c *Chain) reset(lastSeq uint64, lastHash []byte) {
	c.cpSeq = lastSeq
	c.seq = lastSeq
	c.head = slices.Clone(lastHash)
	c.time = time.Time{}
	c.publish()
}

// publish updates the snapshot returned by Head. c.mu must be held.
func (c *Chain) publish() {
	c.gen++
	c.headMu.Lock()
	c.snap = Checkpoint{Stream: c.stream, Seq: c.seq, Hash: c.head, Time: c.time}
	c.snapGen = c.gen
	c.headMu.Unlock()
}

// Stream returns the chain's stream name.
func (c *Chain) Stream() string { return c.stream }

// Head returns the chain's current head: the sequence number and hash of the
// last event successfully written. It does not wait for a write in progress.
func (c *Chain) Head() Checkpoint {
	c.headMu.Lock()
	defer c.headMu.Unlock()
	cp := c.snap
	cp.Hash = slices.Clone(cp.Hash)
	return cp
}

// SetCheckpointFunc makes the chain call fn with its head after a
// successful Append (or AppendBatch) whenever the sequence number passes a
// multiple of every (so at most once per Append, with the head at the end
// of that Append). A multiple passed while [Chain.ResyncPostgres] moved the
// head is checkpointed at the next Append.
//
// fn is called without any of the chain's locks held, by the Append that
// made the checkpoint, and one call at a time in increasing sequence order.
// While fn runs, other Appends go on; if they make newer checkpoints
// meanwhile, only the newest is delivered next (it covers the skipped ones,
// since its hash binds every earlier event), by the goroutine already
// delivering. So a slow fn delays only the Append that calls it.
//
// Write the checkpoints somewhere the audit table's writers cannot alter
// (another database, a log service, a WORM bucket) and pass them to
// [Verify] to detect a stream whose tail was cut off. every 0 or a nil fn
// disables checkpoints.
func (c *Chain) SetCheckpointFunc(every uint64, fn func(Checkpoint)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cpEvery, c.cpFn = every, fn
	if every == 0 {
		c.cpFn = nil
	}
}

// Append seals events in order and hands them to write, while holding the
// chain's lock so that events are stored in sequence order. For each event
// it fills a zero ID (UUIDv7) and a zero Time (now), normalises Time to UTC
// microseconds, and sets Stream, Seq, PrevHash and Hash. The events are
// modified in place and passed to write as the same slice; write must not
// keep the slice after it returns if the caller reuses it (copy it, as
// [Async] does).
//
// If write returns an error (or the MAC fails), the chain's head is restored
// as it was, so the next Append reuses the same sequence numbers and leaves
// no gap; the events' Seq, PrevHash and Hash are cleared and the error is
// returned. An error wrapped with [Stored] (the events were stored before
// something else failed) keeps the events in the chain instead. A nil write only seals the events. Append with no events does
// nothing.
//
// write runs under the chain's lock: it must not call Append on the same
// chain, and it should be quick (one INSERT). To write audit events in the
// caller's transaction, commit inside write (see [PostgresSink.WriteIn]).
func (c *Chain) Append(ctx context.Context, events []Event, write func(ctx context.Context, sealed []Event) error) error {
	if len(events) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	prepare(events)

	c.mu.Lock()
	seq0, head0, time0 := c.seq, c.head, c.time
	if err := c.seal(events); err != nil {
		c.restore(events, seq0, head0, time0)
		c.mu.Unlock()
		return err
	}
	return c.finish(ctx, events, write, seq0, head0, time0)
}

// finish writes events, sealed from the head (seq0, head0, time0), and
// publishes the new head; it releases c.mu, which the caller holds.
func (c *Chain) finish(ctx context.Context, events []Event, write func(context.Context, []Event) error, seq0 uint64, head0 []byte, time0 time.Time) error {
	var w func(context.Context) error
	if write != nil {
		w = func(ctx context.Context) error { return write(ctx, events) }
	}
	return c.commit(ctx, w, func() { c.restore(events, seq0, head0, time0) })
}

// commit calls write, if not nil, and publishes the head the caller sealed
// up to; if write fails (or panics), it calls undo, which restores the head
// the events were sealed from. It releases c.mu, which the caller holds.
func (c *Chain) commit(ctx context.Context, write func(context.Context) error, undo func()) error {
	var late error // a failure after the events were stored
	if write != nil {
		if err := c.callWrite(ctx, write, undo); err != nil {
			s, ok := err.(*storedError) // only the write's own word: not one wrapped inside its error
			if !ok {
				c.mu.Unlock()
				return err
			}
			late = s.err
		}
	}
	c.publish()
	deliver := false
	// Against the last seq seen here, not seq0: a head moved by
	// ResyncPostgres may have passed a multiple of cpEvery.
	if c.cpFn != nil && c.seq/c.cpEvery > c.cpSeq/c.cpEvery {
		deliver = c.offerCheckpoint(Checkpoint{Stream: c.stream, Seq: c.seq, Hash: slices.Clone(c.head), Time: c.time}, c.cpFn)
	}
	c.cpSeq = c.seq
	c.mu.Unlock()
	if deliver {
		c.deliverCheckpoints()
	}
	return late
}

// Stored wraps an error that a write function (of [Chain.Append] or
// [Chain.AppendBatch]) returns when the events were stored durably before
// something else failed, for example a second sink after the audit table:
// the chain keeps the events (its head moves past them, as after a
// success), so that the next Append does not reuse their sequence numbers,
// and Append returns err. It counts only as the write function's own
// return value: wrapped in another error (by a sink, say), it is an
// ordinary failure, and the events are given up. A nil err stays nil.
func Stored(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := err.(*storedError); ok {
		return s
	}
	return &storedError{err: err}
}

type storedError struct{ err error }

func (e *storedError) Error() string { return e.err.Error() }
func (e *storedError) Unwrap() error { return e.err }

// offerCheckpoint queues cp for delivery, replacing an older one not yet
// delivered (cp covers it: its hash binds all earlier events). It reports
// whether the caller must deliver, because nobody else is. c.mu is held, so
// checkpoints are offered in sequence order.
func (c *Chain) offerCheckpoint(cp Checkpoint, fn func(Checkpoint)) bool {
	c.cpMu.Lock()
	defer c.cpMu.Unlock()
	if cp.Seq <= c.cpLast {
		return false
	}
	c.cpLast = cp.Seq
	c.cpPending = &pendingCheckpoint{cp: cp, fn: fn}
	if c.cpRunning {
		return false
	}
	c.cpRunning = true
	return true
}

// deliverCheckpoints calls the checkpoint func with pending checkpoints
// until there are none, without holding any lock during the calls.
func (c *Chain) deliverCheckpoints() {
	done := false
	defer func() {
		if !done { // the func panicked: let the next checkpoint be delivered
			c.cpMu.Lock()
			c.cpRunning = false
			c.cpMu.Unlock()
		}
	}()
	for {
		c.cpMu.Lock()
		p := c.cpPending
		c.cpPending = nil
		if p == nil {
			c.cpRunning = false
			c.cpMu.Unlock()
			done = true
			return
		}
		c.cpMu.Unlock()
		p.fn(p.cp)
	}
}

// callWrite calls write and undo if it fails. If write panics, undo runs
// and c.mu is released before the panic goes on.
func (c *Chain) callWrite(ctx context.Context, write func(context.Context) error, undo func()) (err error) {
	ok := false
	defer func() {
		if !ok {
			undo()
			c.mu.Unlock()
		}
	}()
	err = write(ctx)
	ok = true
	if _, stored := err.(*storedError); err != nil && !stored {
		undo()
	}
	return err
}

// appendMAC is a MAC that appends its tag to a buffer, as
// keys.ChainMAC does: seal then keeps the hashes of a batch in one
// allocation.
type appendMAC interface {
	AppendMAC(dst, data []byte) ([]byte, error)
}

// tagSizeHint is the usual length of a hash: a Tink-prefixed HMAC-SHA256.
const tagSizeHint = 37

// seal assigns stream, sequence numbers and hashes, continuing from the
// chain's head. c.mu must be held.
func (c *Chain) seal(events []Event) error {
	// The encoder keeps the shared fields' digest within this batch only:
	// a Columns slice may be changed in place between two Appends.
	c.canon.valid = false
	seq, head, err := sealRun(c.mac, c.stream, &c.canon, &c.buf, events, c.seq, c.head)
	if err != nil {
		return err
	}
	c.seq, c.head, c.time = seq, head, events[len(events)-1].Time
	return nil
}

// sealRun seals events as the continuation of the chain of stream whose
// head is (seq, head), and returns the new head. The hashes of events
// share one allocation when mac can append; the returned head does not.
func sealRun(mac tink.MAC, stream string, canon *canonicalEncoder, buf *[]byte, events []Event, seq uint64, head []byte) (uint64, []byte, error) {
	am, _ := mac.(appendMAC)
	var tags []byte // the hashes, one after the other, when am is set
	if am != nil {
		tags = make([]byte, 0, tagSizeHint*len(events))
	}
	b := *buf
	defer func() { *buf = b }()
	for i := range events {
		e := &events[i]
		e.Stream = stream
		e.Seq = seq + 1
		e.PrevHash = head
		b = canon.append(append(b[:0], head...), e)
		var h []byte
		var err error
		if am != nil {
			// Should a tag be longer than the hint, append moves on to a new
			// array; the hashes already set keep the old one.
			start := len(tags)
			if tags, err = am.AppendMAC(tags, b); err == nil {
				h = tags[start:len(tags):len(tags)]
			}
		} else {
			h, err = mac.ComputeMAC(b)
		}
		if err != nil {
			return 0, nil, fmt.Errorf("auditing: computing the MAC of stream %q seq %d: %w", stream, e.Seq, err)
		}
		e.Hash = h
		seq, head = e.Seq, h
	}
	if am != nil {
		head = slices.Clone(head) // the head must not keep the batch's hashes alive
	}
	return seq, head, nil
}

// restore puts the head back and unseals the events. c.mu must be held.
func (c *Chain) restore(events []Event, seq uint64, head []byte, t time.Time) {
	c.seq, c.head, c.time = seq, head, t
	for i := range events {
		events[i].Seq, events[i].PrevHash, events[i].Hash = 0, nil, nil
	}
}
