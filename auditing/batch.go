package auditing

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/google/uuid"
)

// Batch is a run of events sealed ahead of their Append, outside the
// chain's lock: typically the read events of a large query, sealed chunk by
// chunk while later rows are still arriving, so that the hash chain costs
// no time once the query ends. Begin one with [Chain.Begin], add events with
// [Batch.Add] as they become known, and append it with [Chain.AppendBatch].
//
// The batch is sealed against the chain's head at Begin. If the chain moved
// on in the meantime (another Append came first), AppendBatch seals the
// events again from the new head, under the chain's lock, as Append would:
// the result is the same chain either way, and a Batch only saves time when
// it has the chain to itself.
//
// All events of a Batch get the time of Begin and consecutive UUIDv7 IDs
// from one random start (see [SchemaSQL]), so the events of one query share
// their time, and their fields are stored once. A Batch is used by one
// goroutine at a time, and only once.
type Batch struct {
	chain  *Chain
	gen    uint64    // the chain's head generation at Begin
	seq    uint64    // sequence number of the last event sealed (the head's at Begin)
	head   []byte    // hash of the last event sealed (the head's at Begin)
	time   time.Time // the time of every event
	first  uuid.UUID // the ID of the first event; the others count up from it
	events []Event
	canon  canonicalEncoder
	clean  cleanCache
	buf    []byte
	err    error
	used   bool
}

// errBatchUsed is returned by AppendBatch for a Batch appended before.
var errBatchUsed = errors.New("auditing: the batch was appended already")

// Begin starts a Batch from the chain's current head. buf, which may be
// nil, is storage for the events: its capacity is used (its contents are
// overwritten), so a caller appending many large batches can hand the
// storage of one (see [Batch.Events]) to the next. Begin takes no lock that
// a write holds.
func (c *Chain) Begin(buf []Event) *Batch {
	c.headMu.Lock()
	seq, head, gen := c.snap.Seq, c.snap.Hash, c.snapGen
	c.headMu.Unlock()
	return &Batch{
		chain:  c,
		gen:    gen,
		seq:    seq,
		head:   head,
		time:   time.Now().UTC().Truncate(time.Microsecond),
		first:  firstV7(),
		events: buf[:0],
	}
}

// Events returns the events added, sealed (once appended, as stored). The
// slice is the batch's storage: do not use it while the batch is in use.
func (b *Batch) Events() []Event { return b.events }

// Len returns the number of events added.
func (b *Batch) Len() int { return len(b.events) }

// Add appends one event per primary key in pks, each a copy of template with
// PK set, ID and Time assigned as described on [Batch] (the template's are
// ignored), and seals them. Strings that PostgreSQL or JSON could not store
// are cleaned as Append cleans them. After a failure, Add does nothing and
// AppendBatch returns the error.
func (b *Batch) Add(template Event, pks ...string) {
	if b.err != nil || b.used || len(pks) == 0 {
		return
	}
	start := len(b.events)
	b.events = slices.Grow(b.events, len(pks))[:start+len(pks)]
	added := b.events[start:]
	template.Time = b.time
	for i, pk := range pks {
		e := &added[i]
		*e = template
		e.PK = pk
		e.ID = nextID(b.first, uint64(start+i))
		b.clean.clean(e)
	}
	seq, head, err := sealRun(b.chain.mac, b.chain.stream, &b.canon, &b.buf, added, b.seq, b.head)
	if err != nil {
		b.err = err
		return
	}
	b.seq, b.head = seq, head
}

// AppendBatch appends the events of b to the chain and hands them to write,
// as [Chain.Append] does with events it seals itself: under the chain's
// lock, in sequence order, with the head restored if write fails. The
// events were sealed by Add; if the chain's head moved since Begin, they are
// sealed again here from the new head, keeping their IDs and time.
func (c *Chain) AppendBatch(ctx context.Context, b *Batch, write func(ctx context.Context, sealed []Event) error) error {
	switch {
	case b.chain != c:
		return errors.New("auditing: the batch belongs to another chain")
	case b.used:
		return errBatchUsed
	case b.err != nil:
		return b.err
	}
	b.used = true
	events := b.events
	if len(events) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	seq0, head0, time0 := c.seq, c.head, c.time
	if c.gen == b.gen {
		c.seq, c.head, c.time = b.seq, b.head, b.time
	} else if err := c.seal(events); err != nil {
		c.restore(events, seq0, head0, time0)
		c.mu.Unlock()
		return err
	}
	return c.finish(ctx, events, write, seq0, head0, time0)
}
