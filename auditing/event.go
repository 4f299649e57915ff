package auditing

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
)

// Action is what an audited operation did to a row.
type Action string

// Actions.
const (
	ActionRead   Action = "read"
	ActionCreate Action = "create"
	ActionUpdate Action = "update"
	ActionDelete Action = "delete"
	// ActionLookup is a search through a blind index (the row was located,
	// not necessarily read).
	ActionLookup Action = "lookup"
)

// Outcome is how an audited operation ended.
type Outcome string

// Outcomes.
const (
	OutcomeOK     Outcome = "ok"
	OutcomeDenied Outcome = "denied"
	OutcomeError  Outcome = "error"
)

// Event records that an actor read or wrote one row holding PHI. It names
// the table, the row's primary key and the columns involved, never their
// values.
//
// Stream, Seq, PrevHash and Hash are set by [Chain.Append]; so are ID and
// Time when they are zero. Events handed out by the readers of this package
// may share their Columns slice with other events: do not modify it.
type Event struct {
	ID         uuid.UUID // UUIDv7
	Time       time.Time // UTC, microsecond precision (survives a timestamptz round trip)
	Actor      Actor
	Action     Action
	Table      string
	PK         string   // printable primary key of the row
	Columns    []string // column names, never values
	Purpose    string
	ClientAddr string
	RequestID  string
	Outcome    Outcome
	Reason     string // short error class for denied/error outcomes, never values
	Stream     string
	Seq        uint64 // from 1 per stream
	PrevHash   []byte // Hash of the event with Seq-1 in the stream; empty for Seq 1
	Hash       []byte // MAC(audit key, PrevHash || Canonical())
}

// Magic strings of the canonical encoding (version 2): one starts the bytes
// of an event, the other the bytes of the fields an event shares with the
// other events of its batch.
const (
	canonicalMagic = "pha\x02"
	sharedMagic    = "phidb.audit.shared\x02"
)

// CanonicalSize is the length of the canonical encoding of an event whose
// primary key is the canonical text of a UUID.
const CanonicalSize = len(canonicalMagic) + 8 + 16 + 17 + sha256.Size

// Canonical appends to dst the bytes of e that the hash chain authenticates
// and returns the extended slice. The hash of an event is
// MAC(audit key, PrevHash || Canonical), so PrevHash and Hash are not part of
// the encoding.
//
// The encoding, version 2, is short, so that a MAC of the previous hash and
// the encoding takes three SHA-256 blocks for the usual event (one with a
// UUID key): the fields that the events of a batch usually share go in as
// their SHA-256 digest. It is
//
//	"pha" 0x02   4 bytes
//	Seq          uint64, big-endian
//	ID           16 bytes
//	PK           0x01 followed by the 16 bytes of the UUID, when PK is the
//	             canonical text of a UUID (36 characters, lowercase
//	             hexadecimal, hyphens after the 8th, 12th, 16th and 20th
//	             digit); otherwise 0x00 followed by PK as str
//	Shared       32 bytes: SHA-256 of the shared fields below
//
// and the shared fields are, in this order,
//
//	"phidb.audit.shared" 0x02
//	Stream      str
//	Time        int64, big-endian: microseconds since the Unix epoch (UTC)
//	Actor.ID    str
//	Actor.Role  str
//	Action      str
//	Table       str
//	Columns     uint32 big-endian count, then each name as str
//	Purpose     str
//	ClientAddr  str
//	RequestID   str
//	Outcome     str
//	Reason      str
//
// where str is a uint32 big-endian byte length followed by the UTF-8 bytes.
// Every field is thus authenticated: the MAC covers the digest, and SHA-256
// is collision resistant. Time below the microsecond is not encoded. A nil
// and an empty Columns encode identically. Strings longer than 4 GiB are not
// supported.
//
// Canonical does not allocate when dst has enough capacity and the shared
// fields are short (under 512 bytes encoded); reuse a buffer across events.
func (e *Event) Canonical(dst []byte) []byte {
	var scratch [512]byte
	d := sha256.Sum256(appendShared(scratch[:0], e))
	return appendCanonical(dst, e, &d)
}

// appendShared appends the encoding of the fields of e that the events of
// a batch share, whose digest Canonical encodes.
func appendShared(dst []byte, e *Event) []byte {
	dst = append(dst, sharedMagic...)
	dst = appendStr(dst, e.Stream)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Time.UnixMicro()))
	dst = appendStr(dst, e.Actor.ID)
	dst = appendStr(dst, e.Actor.Role)
	dst = appendStr(dst, string(e.Action))
	dst = appendStr(dst, e.Table)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Columns)))
	for _, c := range e.Columns {
		dst = appendStr(dst, c)
	}
	dst = appendStr(dst, e.Purpose)
	dst = appendStr(dst, e.ClientAddr)
	dst = appendStr(dst, e.RequestID)
	dst = appendStr(dst, string(e.Outcome))
	return appendStr(dst, e.Reason)
}

// appendCanonical appends the canonical encoding of e, whose shared fields
// have the digest shared.
func appendCanonical(dst []byte, e *Event, shared *[sha256.Size]byte) []byte {
	dst = appendCanonicalHead(dst, e.Seq, &e.ID)
	return append(appendCanonicalPK(dst, e.PK), shared[:]...)
}

// appendCanonicalPK appends the canonical encoding of a primary key.
func appendCanonicalPK(dst []byte, pk string) []byte {
	n := len(dst)
	dst = append(dst, pkUUID, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	if !parseUUID((*[16]byte)(dst[n+1:]), pk) {
		dst = appendStr(append(dst[:n], pkString), pk)
	}
	return dst
}

// Markers of the two encodings of a primary key in the canonical encoding.
const (
	pkString = 0x00 // str follows
	pkUUID   = 0x01 // the 16 bytes of the UUID whose canonical text the key is follow
)

// appendCanonicalHead appends the fields of the canonical encoding before
// the primary key.
func appendCanonicalHead(dst []byte, seq uint64, id *uuid.UUID) []byte {
	dst = append(dst, canonicalMagic...)
	dst = binary.BigEndian.AppendUint64(dst, seq)
	return append(dst, id[:]...)
}

// canonicalEncoder writes what Canonical writes, keeping the digest of the
// shared fields from one event to the next while they do not change, so
// that a batch's shared fields are hashed once. Set valid to false before
// each batch: the Columns slice it compares by identity may change between
// batches.
type canonicalEncoder struct {
	stream                           string
	time                             time.Time
	actor                            Actor
	action                           Action
	table                            string
	columns                          []string
	purpose, addr, requestID, reason string
	outcome                          Outcome
	digest                           [sha256.Size]byte
	scratch                          []byte
	valid                            bool
}

// append appends e's canonical encoding to dst, as e.Canonical(dst).
func (c *canonicalEncoder) append(dst []byte, e *Event) []byte {
	if !c.valid || e.Stream != c.stream || !e.Time.Equal(c.time) || e.Actor != c.actor || e.Action != c.action ||
		e.Table != c.table || !sameColumns(e.Columns, c.columns) || e.Purpose != c.purpose ||
		e.ClientAddr != c.addr || e.RequestID != c.requestID || e.Outcome != c.outcome || e.Reason != c.reason {
		c.stream, c.time, c.actor, c.action, c.table = e.Stream, e.Time, e.Actor, e.Action, e.Table
		c.columns, c.purpose, c.addr, c.requestID, c.outcome, c.reason = e.Columns, e.Purpose, e.ClientAddr, e.RequestID, e.Outcome, e.Reason
		c.scratch = appendShared(c.scratch[:0], e)
		c.digest = sha256.Sum256(c.scratch)
		c.valid = true
	}
	return appendCanonical(dst, e, &c.digest)
}

// sameColumns is slices.Equal, fast for the events of one query, which
// share their Columns slice.
func sameColumns(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b)
}

func appendStr(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(s)))
	return append(dst, s...)
}

// NewEvents returns one event per primary key in pks, for action on the
// given columns of table, with the actor, purpose, request id and client
// address taken from ctx (see [FromContext]) and Outcome [OutcomeOK]. ID and
// Time are left zero for [Chain.Append] to fill. All events share the
// columns slice.
func NewEvents(ctx context.Context, action Action, table string, columns []string, pks ...string) []Event {
	actor, purpose, requestID, clientAddr := FromContext(ctx)
	events := make([]Event, len(pks))
	for i, pk := range pks {
		// Field by field: the slice is zeroed already, and a composite
		// literal would write every field again.
		e := &events[i]
		e.Actor = actor
		e.Action = action
		e.Table = table
		e.PK = pk
		e.Columns = columns
		e.Purpose = purpose
		e.ClientAddr = clientAddr
		e.RequestID = requestID
		e.Outcome = OutcomeOK
	}
	return events
}

// prepare gives every event without an ID a UUIDv7 and every event without
// a time the current time, normalises times to UTC microseconds, and
// replaces invalid UTF-8 and NUL bytes in strings with U+FFFD, which neither
// PostgreSQL text nor JSON could store as they are.
func prepare(events []Event) {
	var (
		now        time.Time
		missingIDs bool
		seen       cleanCache
	)
	for i := range events {
		e := &events[i]
		seen.clean(e)
		if e.ID == uuid.Nil {
			missingIDs = true
		}
		if e.Time.IsZero() {
			if now.IsZero() {
				now = time.Now().UTC().Truncate(time.Microsecond)
			}
			e.Time = now
		} else {
			e.Time = e.Time.UTC().Truncate(time.Microsecond)
		}
	}
	if missingIDs {
		fillV7(events)
	}
}

// cleanCache remembers the last clean value of each string field, so that
// the fields shared by the events of a batch are checked once.
type cleanCache struct {
	ok      [numCleanFields]string
	columns []string
}

const numCleanFields = 10

func (c *cleanCache) clean(e *Event) {
	fields := [numCleanFields]*string{&e.Actor.ID, &e.Actor.Role, (*string)(&e.Action), &e.Table, &e.PK,
		&e.Purpose, &e.ClientAddr, &e.RequestID, (*string)(&e.Outcome), &e.Reason}
	for f, p := range fields {
		if *p == c.ok[f] {
			continue
		}
		if !clean(*p) {
			*p = cleanString(*p)
		}
		c.ok[f] = *p
	}
	if len(e.Columns) == 0 || (len(e.Columns) == len(c.columns) && &e.Columns[0] == &c.columns[0]) {
		return
	}
	for j, col := range e.Columns {
		if !clean(col) {
			e.Columns = slices.Clone(e.Columns) // the slice may be shared with other events
			for k := j; k < len(e.Columns); k++ {
				e.Columns[k] = cleanString(e.Columns[k])
			}
			break
		}
	}
	c.columns = e.Columns
}

func clean(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

func cleanString(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

// fillV7 assigns UUIDv7s (RFC 9562: 48-bit Unix milliseconds, 12 bits of
// sub-millisecond time, 62 random bits) to the events with a nil ID. The IDs
// of one call share their time bits, and their random bits count up by one
// from a random start, modulo 2^62 (RFC 9562, method 2: monotonic random),
// so that the IDs of a batch are distinct and stored as the first one only
// (see [SchemaSQL]).
func fillV7(events []Event) {
	first := firstV7()
	k := uint64(0)
	for i := range events {
		if events[i].ID != uuid.Nil {
			continue
		}
		events[i].ID = nextID(first, k)
		k++
	}
}

// firstV7 returns a new UUIDv7 whose random bits leave room to count up
// from it with nextID.
func firstV7() uuid.UUID {
	var random [8]byte
	if _, err := rand.Read(random[:]); err != nil {
		// crypto/rand.Read does not fail on supported platforms.
		panic("auditing: crypto/rand: " + err.Error())
	}
	t := time.Now()
	ms := uint64(t.UnixMilli())
	frac := uint64(t.Nanosecond()%1e6) * 4096 / 1e6 // 12 bits of sub-millisecond time
	var first uuid.UUID
	binary.BigEndian.PutUint64(first[:8], ms<<16|0x7000|frac)
	binary.BigEndian.PutUint64(first[8:], 1<<63|binary.BigEndian.Uint64(random[:])&idRandomMask) // RFC 9562 variant
	return first
}
