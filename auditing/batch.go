package auditing

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Batch is the events of one operation on many rows (typically the read
// events of a large query), which share every field but the row's primary
// key, sealed ahead of their Append, outside the chain's lock: phidb seals
// a query's events chunk by chunk while later rows are still arriving, so
// that the hash chain costs little time once the query ends. Begin one with
// [Chain.Begin], add the rows' keys with [Batch.Add] or [Batch.AddUUIDs] as
// they become known, and append it with [Chain.AppendBatch].
//
// A Batch holds its events compactly (the shared fields once, then a key,
// and a hash per event) and builds [Event] values only when asked
// ([Batch.Events]); [PostgresSink.WriteBatch] stores it without them.
//
// The batch is sealed against the chain's head at Begin. If the chain moved
// on in the meantime (another Append came first), AppendBatch seals the
// events again from the new head, under the chain's lock, as Append would:
// the chain is the same either way, and a Batch only saves time when it has
// the chain to itself.
//
// All events of a Batch get one time and consecutive UUIDv7 IDs from one
// random start (see [SchemaSQL]): those of Begin, or, if the batch had to
// be sealed again, those of the last sealing, so that times never go back
// along the chain. For phidb's reads, that is when the rows began to arrive.
// A Batch is used by one goroutine at a time, and appended once.
type Batch struct {
	chain *Chain
	gen   uint64    // the chain's head generation when sealed
	prev  []byte    // the hash the first event chains from
	seq0  uint64    // the sequence number before the first event
	head  []byte    // hash of the last event sealed
	time  time.Time // the time of every event
	first uuid.UUID // the ID of the first event; the others count up from it

	template Event // the shared fields as given to the first Add
	shared   Event // the same, cleaned, with Stream and Time set
	digest   [sha256.Size]byte
	started  bool

	n      int
	keys   []byte   // 16 bytes per event while every key is the text of a UUID
	strs   []string // every event's key, once one is not (keys is then nil)
	tags   [][]byte // each event's hash, tagLen bytes each, tagsPerChunk events per chunk
	tagLen int

	buf     []byte
	events  []Event // built by Events
	err     error
	used    bool
	writing bool // AppendBatch is handing the batch to its write function
}

// Errors of Batch.
var (
	errBatchUsed   = errors.New("auditing: the batch was appended already")
	errBatchFields = errors.New("auditing: the events of a batch must share every field but the primary key")
)

// Begin starts a Batch from the chain's current head. It takes no lock that
// a write holds.
func (c *Chain) Begin() *Batch {
	c.headMu.Lock()
	seq, head, gen := c.snap.Seq, c.snap.Hash, c.snapGen
	c.headMu.Unlock()
	return &Batch{
		chain: c,
		gen:   gen,
		prev:  head,
		seq0:  seq,
		head:  head,
		time:  time.Now().UTC().Truncate(time.Microsecond),
		first: firstV7(),
	}
}

// Len returns the number of events added.
func (b *Batch) Len() int { return b.n }

// Add adds one event per primary key in pks, copies of template (whose
// fields every event of the batch shares; its PK, ID, Time, Stream, Seq and
// hashes are ignored) and seals them. Strings that PostgreSQL or JSON could
// not store are cleaned as Append cleans them. After a failure (a template
// unlike the first, or a MAC error), Add does nothing more and AppendBatch
// returns the error.
func (b *Batch) Add(template Event, pks ...string) {
	if !b.start(&template, len(pks)) {
		return
	}
	start := b.n
	for _, pk := range pks {
		if b.strs == nil {
			var u [16]byte
			if parseUUID(&u, pk) {
				b.keys = append(b.keys, u[:]...)
				continue
			}
			b.toStrings()
		}
		if !clean(pk) {
			pk = cleanString(pk)
		}
		b.strs = append(b.strs, pk)
	}
	b.n += len(pks)
	b.seal(start)
}

// AddUUIDs is Add for rows whose primary keys are UUIDs: each event's PK is
// the UUID's canonical text.
func (b *Batch) AddUUIDs(template Event, pks ...uuid.UUID) {
	if !b.start(&template, len(pks)) {
		return
	}
	start := b.n
	if b.strs == nil {
		for i := range pks {
			b.keys = append(b.keys, pks[i][:]...)
		}
	} else {
		for _, pk := range pks {
			b.strs = append(b.strs, pk.String())
		}
	}
	b.n += len(pks)
	b.seal(start)
}

// start checks that events can be added with template; the first call
// takes the shared fields from it.
func (b *Batch) start(template *Event, n int) bool {
	if b.err != nil || b.used || n == 0 {
		return false
	}
	if !b.started {
		b.template = *template
		b.shared = *template
		var c cleanCache
		c.clean(&b.shared)
		b.shared.Stream, b.shared.Time = b.chain.stream, b.time
		b.shared.PK, b.shared.ID, b.shared.Seq, b.shared.PrevHash, b.shared.Hash = "", uuid.Nil, 0, nil, nil
		b.digest = sha256.Sum256(appendShared(nil, &b.shared))
		b.started = true
		return true
	}
	t := &b.template
	if template.Actor != t.Actor || template.Action != t.Action || template.Table != t.Table ||
		!sameColumns(template.Columns, t.Columns) || template.Purpose != t.Purpose || template.ClientAddr != t.ClientAddr ||
		template.RequestID != t.RequestID || template.Outcome != t.Outcome || template.Reason != t.Reason {
		b.err = errBatchFields
		return false
	}
	return true
}

// toStrings switches the batch to keeping keys as strings.
func (b *Batch) toStrings() {
	b.strs = make([]string, 0, b.n+1)
	var text [36]byte
	for i := range b.n {
		b.strs = append(b.strs, string(appendUUID(text[:0], b.keys[16*i:])))
	}
	b.keys = nil
}

// tagsPerChunk is how many hashes one chunk of Batch.tags holds: growing
// the hashes copies at most one chunk (none for tags of the usual size).
const tagsPerChunk = 1024

// seal seals the events from index start on, continuing from b.head.
func (b *Batch) seal(start int) {
	am, _ := b.chain.mac.(appendMAC)
	head := b.head
	for i := start; i < b.n; i++ {
		id := nextID(b.first, uint64(i))
		buf := appendCanonicalHead(append(b.buf[:0], head...), b.seq0+uint64(i)+1, &id)
		if b.strs == nil {
			buf = append(append(buf, pkUUID), b.keys[16*i:16*i+16]...)
		} else {
			buf = appendCanonicalPK(buf, b.strs[i])
		}
		buf = append(buf, b.digest[:]...)
		b.buf = buf
		c := i / tagsPerChunk
		if c == len(b.tags) {
			size := tagSizeHint
			if b.tagLen > 0 {
				size = b.tagLen
			}
			b.tags = append(b.tags, make([]byte, 0, size*tagsPerChunk))
		}
		chunk := b.tags[c]
		n := len(chunk)
		var err error
		if am != nil {
			chunk, err = am.AppendMAC(chunk, buf)
		} else {
			var h []byte
			if h, err = b.chain.mac.ComputeMAC(buf); err == nil {
				chunk = append(chunk, h...)
			}
		}
		if err == nil && i == 0 {
			b.tagLen = len(chunk) - n
		}
		if err == nil && len(chunk)-n != b.tagLen {
			err = errors.New("hashes of different lengths")
		}
		if err != nil {
			b.err = fmt.Errorf("auditing: computing the MAC of stream %q seq %d: %w", b.chain.stream, b.seq0+uint64(i)+1, err)
			b.n = i // only the events sealed count
			return
		}
		b.tags[c] = chunk
		head = chunk[n:len(chunk):len(chunk)]
	}
	b.head = head
	b.events = nil
}

// reseal seals every event again, continuing from the chain's head (seq,
// head) of generation gen instead of the one they were sealed from, with a
// new time and new IDs.
func (b *Batch) reseal(seq uint64, head []byte, gen uint64) {
	b.seq0, b.prev, b.head, b.tags, b.gen = seq, head, head, nil, gen
	b.time = time.Now().UTC().Truncate(time.Microsecond)
	b.first = firstV7()
	b.shared.Time = b.time
	b.digest = sha256.Sum256(appendShared(nil, &b.shared))
	b.seal(0)
}

// hash returns the hash of event i.
func (b *Batch) hash(i int) []byte {
	chunk, j := b.tags[i/tagsPerChunk], i%tagsPerChunk
	return chunk[j*b.tagLen : (j+1)*b.tagLen : (j+1)*b.tagLen]
}

// pkOf returns the primary key of event i.
func (b *Batch) pkOf(i int) string {
	if b.strs != nil {
		return b.strs[i]
	}
	var text [36]byte
	return string(appendUUID(text[:0], b.keys[16*i:]))
}

// Events returns the events of the batch, sealed: once appended, as stored.
// It builds them on the first call after events were added or sealed again;
// do not modify them.
func (b *Batch) Events() []Event {
	if b.err != nil {
		return nil
	}
	if b.events != nil || b.n == 0 {
		return b.events
	}
	events := make([]Event, b.n)
	var pks string
	if b.strs == nil { // the keys' texts in one allocation
		var sb strings.Builder
		sb.Grow(36 * b.n)
		var text [36]byte
		for i := range b.n {
			sb.Write(appendUUID(text[:0], b.keys[16*i:]))
		}
		pks = sb.String()
	}
	prev := b.prev
	for i := range events {
		e := &events[i]
		*e = b.shared
		e.Seq = b.seq0 + uint64(i) + 1
		e.ID = nextID(b.first, uint64(i))
		if b.strs == nil {
			e.PK = pks[36*i : 36*(i+1)]
		} else {
			e.PK = b.strs[i]
		}
		e.PrevHash = prev
		e.Hash = b.hash(i)
		prev = e.Hash
	}
	b.events = events
	return events
}

// AppendBatch appends the events of b to the chain and hands the batch to
// write, as [Chain.Append] does with events it seals itself: under the
// chain's lock, in sequence order, with the head restored if write fails.
// The events were sealed by Add. If the chain's head moved since, they are
// sealed again from the new head, with a new time and new IDs: first
// outside the lock (twice at most, should the head move again), then under
// it. write stores the batch, with [PostgresSink.WriteBatch] or by passing
// [Batch.Events] to a [Sink].
func (c *Chain) AppendBatch(ctx context.Context, b *Batch, write func(ctx context.Context, b *Batch) error) error {
	switch {
	case b.chain != c:
		return errors.New("auditing: the batch belongs to another chain")
	case b.used:
		return errBatchUsed
	case b.err != nil:
		return b.err
	}
	b.used = true
	if b.n == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	for try := 0; c.gen != b.gen && try < 2; try++ {
		seq, head, gen := c.seq, c.head, c.gen
		c.mu.Unlock()
		if b.reseal(seq, head, gen); b.err != nil {
			return b.err
		}
		c.mu.Lock()
	}
	seq0, head0, time0 := c.seq, c.head, c.time
	if c.gen != b.gen {
		if b.reseal(c.seq, c.head, c.gen); b.err != nil {
			c.mu.Unlock()
			return b.err
		}
	}
	// The head must not keep the batch's hashes alive.
	c.seq, c.head, c.time = b.seq0+uint64(b.n), slices.Clone(b.head), b.time
	var w func(context.Context) error
	if write != nil {
		w = func(ctx context.Context) error {
			b.writing = true
			defer func() { b.writing = false }()
			return write(ctx, b)
		}
	}
	return c.commit(ctx, w, func() { c.seq, c.head, c.time = seq0, head0, time0 })
}
