package auditing

import (
	"context"
	"crypto/rand"
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

// canonicalMagic starts every canonical encoding: a format name and version.
const canonicalMagic = "phidb.audit\x01"

// Canonical appends to dst the bytes of e that the hash chain authenticates
// and returns the extended slice. The hash of an event is
// MAC(audit key, PrevHash || Canonical), so PrevHash and Hash are not part of
// the encoding.
//
// The encoding, version 1, is the 12-byte magic "phidb.audit" followed by
// the byte 0x01, then these fields in this order:
//
//	Stream      str
//	Seq         uint64, big-endian
//	ID          16 bytes
//	Time        int64, big-endian: microseconds since the Unix epoch (UTC)
//	Actor.ID    str
//	Actor.Role  str
//	Action      str
//	Table       str
//	PK          str
//	Columns     uint32 big-endian count, then each name as str
//	Purpose     str
//	ClientAddr  str
//	RequestID   str
//	Outcome     str
//	Reason      str
//
// where str is a uint32 big-endian byte length followed by the UTF-8 bytes.
// Time below the microsecond is not encoded. A nil and an empty Columns
// encode identically. Strings longer than 4 GiB are not supported.
//
// Canonical does not allocate when dst has enough capacity; reuse a buffer
// across events.
func (e *Event) Canonical(dst []byte) []byte {
	dst = append(dst, canonicalMagic...)
	dst = appendStr(dst, e.Stream)
	dst = binary.BigEndian.AppendUint64(dst, e.Seq)
	dst = append(dst, e.ID[:]...)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Time.UnixMicro()))
	dst = appendStr(dst, e.Actor.ID)
	dst = appendStr(dst, e.Actor.Role)
	dst = appendStr(dst, string(e.Action))
	dst = appendStr(dst, e.Table)
	dst = appendStr(dst, e.PK)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(e.Columns)))
	for _, c := range e.Columns {
		dst = appendStr(dst, c)
	}
	dst = appendStr(dst, e.Purpose)
	dst = appendStr(dst, e.ClientAddr)
	dst = appendStr(dst, e.RequestID)
	dst = appendStr(dst, string(e.Outcome))
	dst = appendStr(dst, e.Reason)
	return dst
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
		events[i] = Event{
			Actor:      actor,
			Action:     action,
			Table:      table,
			PK:         pk,
			Columns:    columns,
			Purpose:    purpose,
			ClientAddr: clientAddr,
			RequestID:  requestID,
			Outcome:    OutcomeOK,
		}
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
		missingIDs int
		seen       cleanCache
	)
	for i := range events {
		e := &events[i]
		seen.clean(e)
		if e.ID == uuid.Nil {
			missingIDs++
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
	if missingIDs > 0 {
		fillV7(events, missingIDs)
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
// sub-millisecond time, 62 random bits) to the events with a nil ID, reading
// the random bits for the whole batch at once.
func fillV7(events []Event, n int) {
	random := make([]byte, 8*n)
	if _, err := rand.Read(random); err != nil {
		// crypto/rand.Read does not fail on supported platforms.
		panic("auditing: crypto/rand: " + err.Error())
	}
	t := time.Now()
	ms := uint64(t.UnixMilli())
	frac := uint64(t.Nanosecond()%1e6) * 4096 / 1e6 // 12 bits of sub-millisecond time
	for i := range events {
		if events[i].ID != uuid.Nil {
			continue
		}
		var u uuid.UUID
		binary.BigEndian.PutUint64(u[:8], ms<<16|0x7000|frac)
		copy(u[8:], random[:8])
		random = random[8:]
		u[8] = u[8]&0x3f | 0x80 // RFC 9562 variant
		events[i].ID = u
	}
}
