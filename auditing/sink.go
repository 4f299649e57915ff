package auditing

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
)

// Sink stores sealed audit events. Write must store the events of one call
// in order and, for a sink that can fail, either store them all or report an
// error. Errors never carry event contents beyond stream, table and
// sequence numbers.
type Sink interface {
	Write(ctx context.Context, events []Event) error
}

// describe names a batch of events in errors: stream and sequence range
// only.
func describe(events []Event) string {
	if len(events) == 0 {
		return "no events"
	}
	first, last := events[0], events[len(events)-1]
	return fmt.Sprintf("%d events of stream %q, seq %d to %d", len(events), first.Stream, first.Seq, last.Seq)
}

// FanOut returns a sink that writes every batch to each of sinks in turn
// (all of them, even after a failure) and returns the errors joined with
// [errors.Join], or nil if all succeeded. Nil sinks are skipped.
func FanOut(sinks ...Sink) Sink {
	return fanOut(sinks)
}

type fanOut []Sink

func (f fanOut) Write(ctx context.Context, events []Event) error {
	var errs []error
	for _, s := range f {
		if s == nil {
			continue
		}
		if err := s.Write(ctx, events); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// JSONSink writes events as JSON lines: one object per event per line, with
// hashes in lowercase hex and times in RFC 3339 UTC with microseconds. The
// lines of one Write are written with one call to the writer. It is safe for
// concurrent use. [ReadJSON] reads the format back.
//
// The object's members are v (2: the version of the canonical encoding the
// hashes cover, see [Event.Canonical]), stream, seq, id, time, actor_id,
// actor_role, action, table, pk, columns, purpose, client_addr, request_id,
// outcome, reason, prev_hash and hash; empty optional strings are omitted.
type JSONSink struct {
	mu sync.Mutex
	w  io.Writer
}

// jsonVersion is the member v of the JSON lines: the version of the
// canonical encoding (the fourth byte of canonicalMagic).
const jsonVersion = 2

// NewJSONSink returns a sink writing JSON lines to w.
func NewJSONSink(w io.Writer) *JSONSink { return &JSONSink{w: w} }

type jsonEvent struct {
	V          int       `json:"v"`
	Stream     string    `json:"stream"`
	Seq        uint64    `json:"seq"`
	ID         uuid.UUID `json:"id"`
	Time       time.Time `json:"time"`
	ActorID    string    `json:"actor_id"`
	ActorRole  string    `json:"actor_role,omitempty"`
	Action     Action    `json:"action"`
	Table      string    `json:"table"`
	PK         string    `json:"pk"`
	Columns    []string  `json:"columns"`
	Purpose    string    `json:"purpose,omitempty"`
	ClientAddr string    `json:"client_addr,omitempty"`
	RequestID  string    `json:"request_id,omitempty"`
	Outcome    Outcome   `json:"outcome"`
	Reason     string    `json:"reason,omitempty"`
	PrevHash   string    `json:"prev_hash"`
	Hash       string    `json:"hash"`
}

// Write appends one JSON line per event.
func (s *JSONSink) Write(ctx context.Context, events []Event) error {
	if len(events) == 0 {
		return nil
	}
	var buf bytes.Buffer
	buf.Grow(len(events) * 512)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	for i := range events {
		e := &events[i]
		if err := enc.Encode(jsonEvent{
			V: jsonVersion, Stream: e.Stream, Seq: e.Seq, ID: e.ID, Time: e.Time.UTC(),
			ActorID: e.Actor.ID, ActorRole: e.Actor.Role,
			Action: e.Action, Table: e.Table, PK: e.PK, Columns: e.Columns,
			Purpose: e.Purpose, ClientAddr: e.ClientAddr, RequestID: e.RequestID,
			Outcome: e.Outcome, Reason: e.Reason,
			PrevHash: hex.EncodeToString(e.PrevHash), Hash: hex.EncodeToString(e.Hash),
		}); err != nil {
			// Only invalid times can fail; the value is not included.
			return fmt.Errorf("auditing: JSON sink: encoding stream %q seq %d: invalid field", e.Stream, e.Seq)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("auditing: JSON sink: writing %s: %w", describe(events), err)
	}
	return nil
}

// ReadJSON reads the events written by a [JSONSink], in file order. Blank
// lines are skipped. Errors name the line number, not its contents.
func ReadJSON(r io.Reader) ([]Event, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var events []Event
	for line := 1; ; line++ {
		b, err := br.ReadBytes('\n')
		if len(bytes.TrimSpace(b)) > 0 {
			var j jsonEvent
			if err := json.Unmarshal(b, &j); err != nil {
				return events, fmt.Errorf("auditing: JSON line %d: not a valid audit event", line)
			}
			switch {
			case j.V == 0:
				return events, fmt.Errorf("auditing: JSON line %d: an event of an earlier phidb (no member v), whose hashes this version cannot check", line)
			case j.V != jsonVersion:
				return events, fmt.Errorf("auditing: JSON line %d: format version %d is not supported (want %d)", line, j.V, jsonVersion)
			}
			prev, err1 := hex.DecodeString(j.PrevHash)
			hash, err2 := hex.DecodeString(j.Hash)
			if err1 != nil || err2 != nil {
				return events, fmt.Errorf("auditing: JSON line %d: hash is not hex", line)
			}
			if len(prev) == 0 {
				prev = nil
			}
			events = append(events, Event{
				ID: j.ID, Time: j.Time.UTC(), Actor: Actor{ID: j.ActorID, Role: j.ActorRole},
				Action: j.Action, Table: j.Table, PK: j.PK, Columns: j.Columns,
				Purpose: j.Purpose, ClientAddr: j.ClientAddr, RequestID: j.RequestID,
				Outcome: j.Outcome, Reason: j.Reason,
				Stream: j.Stream, Seq: j.Seq, PrevHash: prev, Hash: hash,
			})
		}
		if err == io.EOF {
			return events, nil
		}
		if err != nil {
			return events, fmt.Errorf("auditing: reading JSON line %d: %w", line, err)
		}
	}
}

// SlogSink logs one record per event, at level Info with the message
// "phidb audit", carrying the event's fields as attributes (stream, seq, id,
// time, actor_id, actor_role, action, table, pk, columns, purpose,
// client_addr, request_id, outcome, reason, hash in hex). Events hold no
// values, so neither do the records. The log is for operators and SIEM
// pipelines; PrevHash is not logged, so a log cannot be verified with
// [Verify] (use [JSONSink] for that).
type SlogSink struct{ l *slog.Logger }

// NewSlogSink returns a sink logging to l (slog.Default() if nil).
func NewSlogSink(l *slog.Logger) *SlogSink {
	if l == nil {
		l = slog.Default()
	}
	return &SlogSink{l: l}
}

// Write logs the events. It never fails.
func (s *SlogSink) Write(ctx context.Context, events []Event) error {
	if !s.l.Enabled(ctx, slog.LevelInfo) {
		return nil
	}
	for i := range events {
		e := &events[i]
		s.l.LogAttrs(ctx, slog.LevelInfo, "phidb audit",
			slog.String("stream", e.Stream),
			slog.Uint64("seq", e.Seq),
			slog.String("id", e.ID.String()),
			slog.Time("time", e.Time),
			slog.String("actor_id", e.Actor.ID),
			slog.String("actor_role", e.Actor.Role),
			slog.String("action", string(e.Action)),
			slog.String("table", e.Table),
			slog.String("pk", e.PK),
			slog.Any("columns", e.Columns),
			slog.String("purpose", e.Purpose),
			slog.String("client_addr", e.ClientAddr),
			slog.String("request_id", e.RequestID),
			slog.String("outcome", string(e.Outcome)),
			slog.String("reason", e.Reason),
			slog.String("hash", hex.EncodeToString(e.Hash)),
		)
	}
	return nil
}
