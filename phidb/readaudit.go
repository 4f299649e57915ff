package phidb

import (
	"context"
	"errors"
	"reflect"

	"github.com/google/uuid"

	"github.com/phidb/phidb/auditing"
	"github.com/phidb/phidb/codec"
)

// readAudit seals the read events of a large result while its rows stream
// in: from the first full chunk on, each chunk's primary keys go to a
// goroutine that adds them to an auditing.Batch, so that the hash chain is
// computed alongside the network and decryption instead of after them. The
// batch is appended, and the events stored, only once every row has been
// read and decrypted; a failed read discards it.
type readAudit[T any] struct {
	ctx    context.Context // carries the actor
	a      *auditor
	s      *codec.Schema
	action auditing.Action

	batch    *auditing.Batch
	template auditing.Event
	work     chan []T
	done     chan struct{}
	panicked bool // the sealing goroutine panicked (read after done is closed)
}

// newReadAudit returns the sealer of a read, or nil without auditing.
func newReadAudit[T any](ctx context.Context, a *auditor, s *codec.Schema, action auditing.Action) *readAudit[T] {
	if a == nil {
		return nil
	}
	return &readAudit[T]{ctx: ctx, a: a, s: s, action: action}
}

// add hands the rows of a full chunk to the sealing goroutine, starting it
// on the first call. columns names the columns read, for the events.
func (r *readAudit[T]) add(rows []T, columns []string) {
	if r == nil {
		return
	}
	if r.work == nil {
		r.template = auditing.NewEvents(r.ctx, r.action, r.s.Table, columns, "")[0]
		r.batch = r.a.chain.Begin()
		r.work = make(chan []T, 64)
		r.done = make(chan struct{})
		go func() {
			defer close(r.done)
			var keys []uuid.UUID // reused: the batch copies them
			for rows := range r.work {
				if !r.panicked { // after a panic, drain: the reader must not block
					keys = r.seal(keys, rows)
				}
			}
		}()
	}
	r.work <- rows
}

// seal adds the events of rows to the batch. A panic is recovered, so that
// the read fails instead of the process; its value, which could quote a
// row, is dropped.
func (r *readAudit[T]) seal(keys []uuid.UUID, rows []T) []uuid.UUID {
	defer func() {
		if recover() != nil {
			r.panicked = true
		}
	}()
	if r.s.PK != nil && r.s.PK.Type == reflect.TypeFor[uuid.UUID]() {
		keys = pkUUIDs(keys[:0], r.s, rows)
		r.batch.AddUUIDs(r.template, keys...)
	} else {
		r.batch.Add(r.template, pkStrings(r.s, rows)...)
	}
	return keys
}

// errSealing is returned by a read whose audit events could not be sealed.
var errSealing = errors.New("phidb: sealing the audit events of the read failed (internal error)")

// finish adds the last, partial chunk and waits for the sealing goroutine.
// It returns the batch, or nil if no full chunk was read (the events of
// small results are sealed when they are recorded).
func (r *readAudit[T]) finish(rows []T) (*auditing.Batch, error) {
	if r == nil || r.work == nil {
		return nil, nil
	}
	if len(rows) > 0 {
		r.work <- rows
	}
	r.stop()
	if r.panicked {
		return nil, errSealing
	}
	return r.batch, nil
}

// stop ends the sealing goroutine; it is safe to call more than once.
func (r *readAudit[T]) stop() {
	if r != nil && r.work != nil {
		close(r.work)
		<-r.done
		r.work = nil
	}
}

// pkUUIDs appends to keys the primary keys of rows whose key field is a
// uuid.UUID.
func pkUUIDs[T any](keys []uuid.UUID, s *codec.Schema, rows []T) []uuid.UUID {
	for i := range rows {
		keys = append(keys, uuid.UUID(s.PK.Value(reflect.ValueOf(&rows[i]).Elem()).Bytes()))
	}
	return keys
}
