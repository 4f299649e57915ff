package phidb

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"

	"github.com/phidb/phidb/auditing"
)

// Insert writes one model, given by pointer, as one INSERT. Fields tagged
// encrypt are sealed and bound to the table, column and primary key; a zero
// uuid.UUID primary key is first set to a new UUIDv7, visible to the caller.
func Insert(ctx context.Context, q Querier, v any) error {
	if reflect.ValueOf(v).Kind() != reflect.Pointer {
		return fmt.Errorf("phidb: Insert needs a pointer to the model, so a generated key can be set; got %T", v)
	}
	m, root, err := writable(v)
	if err != nil {
		return err
	}
	if ctx, err = q.engine().actor(ctx, auditing.ActionCreate, m.s.Table); err != nil {
		return err
	}
	if err := m.fillPK(root); err != nil {
		return err
	}
	var pk, buf []byte
	args, err := m.rowArgs(q.engine(), root, make([]any, 0, len(m.columns)), &pk, &buf)
	if err != nil {
		return err
	}
	return audited(ctx, q, auditing.ActionCreate, m.s.Table, func(q Querier) error {
		if _, err := q.Exec(ctx, m.insertSQL, args...); err != nil {
			return fmt.Errorf("phidb: insert into %s: %w", m.s.Table, err)
		}
		return nil
	}, func() []auditing.Event {
		return auditing.NewEvents(ctx, auditing.ActionCreate, m.s.Table, m.columns, m.s.PKString(root))
	})
}

// Update writes every column of one model, given by pointer or value, to the
// row with its primary key. It returns an error matching pgx.ErrNoRows when
// no such row exists.
func Update(ctx context.Context, q Querier, v any) error {
	m, root, err := writable(v)
	if err != nil {
		return err
	}
	if ctx, err = q.engine().actor(ctx, auditing.ActionUpdate, m.s.Table); err != nil {
		return err
	}
	var pk, buf []byte
	args, err := m.rowArgs(q.engine(), root, make([]any, 0, len(m.columns)), &pk, &buf)
	if err != nil {
		return err
	}
	// rowArgs follows column order; UPDATE wants the key last.
	set := args[:0:0]
	var key any
	for i, a := range args {
		if i < len(m.s.Fields) && m.s.Fields[i].PK {
			key = a
		} else {
			set = append(set, a)
		}
	}
	return audited(ctx, q, auditing.ActionUpdate, m.s.Table, func(q Querier) error {
		tag, err := q.Exec(ctx, m.updateSQL, append(set, key)...)
		if err != nil {
			return fmt.Errorf("phidb: update %s: %w", m.s.Table, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("phidb: update %s pk %s: %w", m.s.Table, m.s.PKString(root), pgx.ErrNoRows)
		}
		return nil
	}, func() []auditing.Event {
		return auditing.NewEvents(ctx, auditing.ActionUpdate, m.s.Table, m.columns, m.s.PKString(root))
	})
}

// Delete removes the row of model T whose primary key is pk. It returns an
// error matching pgx.ErrNoRows when no such row exists.
func Delete[T any](ctx context.Context, q Querier, pk any) error {
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return err
	}
	if ctx, err = q.engine().actor(ctx, auditing.ActionDelete, m.s.Table); err != nil {
		return err
	}
	return audited(ctx, q, auditing.ActionDelete, m.s.Table, func(q Querier) error {
		tag, err := q.Exec(ctx, m.deleteSQL, pk)
		if err != nil {
			return fmt.Errorf("phidb: delete from %s: %w", m.s.Table, err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("phidb: delete from %s: %w", m.s.Table, pgx.ErrNoRows)
		}
		return nil
	}, func() []auditing.Event {
		return auditing.NewEvents(ctx, auditing.ActionDelete, m.s.Table, nil, pkText(pk))
	})
}

// InsertMany writes rows (structs or pointers to structs) in one round trip
// with COPY. Zero UUID primary keys are set in rows. Rows are sealed a chunk
// at a time, by pgx's COPY goroutine and, on machines with more than two
// CPUs, by workers ahead of it, while earlier chunks stream to the server;
// if any row cannot be sealed, the COPY is aborted and nothing is written.
// It returns the number of rows written.
func InsertMany[T any](ctx context.Context, q Querier, rows []T) (int64, error) {
	if len(rows) == 0 {
		return 0, nil
	}
	m, err := modelFor(reflect.TypeFor[T]())
	if err != nil {
		return 0, err
	}
	if ctx, err = q.engine().actor(ctx, auditing.ActionCreate, m.s.Table); err != nil {
		return 0, err
	}
	var written int64
	err = audited(ctx, q, auditing.ActionCreate, m.s.Table, func(q Querier) error {
		src := newSealingSource(q.engine(), m, rows)
		defer src.stop()
		n, err := q.CopyFrom(ctx, m.table, m.columns, src)
		if serr := src.stop(); serr != nil {
			return serr
		}
		if err != nil {
			return fmt.Errorf("phidb: insert into %s: %w", m.s.Table, err)
		}
		written = n
		return nil
	}, func() []auditing.Event {
		pks := make([]string, len(rows))
		for i := range rows {
			root, _ := structRoot(reflect.ValueOf(&rows[i]).Elem())
			pks[i] = m.s.PKString(root)
		}
		return auditing.NewEvents(ctx, auditing.ActionCreate, m.s.Table, m.columns, pks...)
	})
	if err != nil {
		return 0, err
	}
	return written, nil
}

// sealingSource is a pgx.CopyFromSource over model rows that seals them a
// chunk at a time. pgx's CopyFrom reads it on a goroutine of its own, which
// seals each chunk as it reaches it unless a worker goroutine has taken the
// chunk first; there are max(GOMAXPROCS-2, 0) workers, sealing ahead of pgx.
//
// Why so few: besides the goroutine that calls Next (and encodes the rows
// into COPY data), pgx runs a second one that writes that data to the
// connection, through TLS. More sealing goroutines than the Ps left over do
// not make the COPY faster; they preempt pgx's two and, when PostgreSQL
// shares the machine, the server process, which is what the COPY waits on.
// With 2 CPUs and a local server, GOMAXPROCS workers made InsertMany of
// 10,000 rows about 1.7 times as slow as a plain pgx COPY,
// GOMAXPROCS-1 workers 1.5 times, and sealing on pgx's goroutine alone 1.35
// times (see BenchmarkInsertMany10k).
type sealingSource[T any] struct {
	rows   []T
	values [][]any
	seal   func(ci int) error // seals chunk ci into values
	done   []chan struct{}    // closed when chunk i is sealed
	errs   []error            // per chunk
	next   atomic.Int64       // first chunk nobody has taken
	quit   atomic.Bool
	wg     sync.WaitGroup
	pos    int // row pgx reads next, plus one
	err    error
}

func newSealingSource[T any](e *engine, m *model, rows []T) *sealingSource[T] {
	nchunks := (len(rows) + chunkRows - 1) / chunkRows
	s := &sealingSource[T]{
		rows:   rows,
		values: make([][]any, len(rows)),
		done:   make([]chan struct{}, nchunks),
		errs:   make([]error, nchunks),
	}
	for i := range s.done {
		s.done[i] = make(chan struct{})
	}
	flat := make([]any, len(rows)*len(m.columns))
	s.seal = func(ci int) error {
		var pk, buf []byte
		n := len(m.columns)
		for i := ci * chunkRows; i < min((ci+1)*chunkRows, len(rows)); i++ {
			root, err := structRoot(reflect.ValueOf(&rows[i]).Elem())
			if err != nil {
				return err
			}
			if err := m.fillPK(root); err != nil {
				return err
			}
			if s.values[i], err = m.rowArgs(e, root, flat[i*n:i*n:(i+1)*n], &pk, &buf); err != nil {
				return err
			}
		}
		return nil
	}
	for range min(max(runtime.GOMAXPROCS(0)-2, 0), nchunks) {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for {
				ci := int(s.next.Add(1) - 1)
				if ci >= nchunks || s.quit.Load() {
					return
				}
				s.sealChunk(ci)
			}
		}()
	}
	return s
}

// sealChunk seals chunk ci, which the caller has taken, and publishes it.
func (s *sealingSource[T]) sealChunk(ci int) {
	s.errs[ci] = s.seal(ci)
	close(s.done[ci])
}

// Next seals the row's chunk unless a worker has taken it, in which case it
// waits for the worker.
func (s *sealingSource[T]) Next() bool {
	if s.err != nil || s.pos >= len(s.rows) {
		return false
	}
	if s.pos%chunkRows == 0 {
		ci := s.pos / chunkRows
		// Chunks are taken in order, each exactly once: workers by
		// incrementing next, this goroutine only if next is still ci.
		if s.next.CompareAndSwap(int64(ci), int64(ci)+1) {
			s.sealChunk(ci)
		}
		<-s.done[ci]
		if s.errs[ci] != nil {
			s.err = s.errs[ci]
			return false
		}
	}
	s.pos++
	return true
}

func (s *sealingSource[T]) Values() ([]any, error) { return s.values[s.pos-1], nil }

func (s *sealingSource[T]) Err() error { return s.err }

// stop waits for the workers (telling them to give up if pgx stopped early)
// and returns the first sealing error.
func (s *sealingSource[T]) stop() error {
	s.quit.Store(true)
	s.wg.Wait()
	if s.err != nil {
		return s.err
	}
	for i, err := range s.errs {
		if err != nil && i*chunkRows < s.pos {
			return err
		}
	}
	return nil
}

// writable returns the model and struct of a value passed to a write.
func writable(v any) (*model, reflect.Value, error) {
	rv := reflect.ValueOf(v)
	if !rv.IsValid() {
		return nil, reflect.Value{}, fmt.Errorf("phidb: nil model")
	}
	root, err := structRoot(rv)
	if err != nil {
		return nil, reflect.Value{}, err
	}
	if rv.Kind() != reflect.Pointer {
		// Copy into addressable memory: field values are read through
		// reflection, and Insert may need to set the key.
		p := reflect.New(root.Type()).Elem()
		p.Set(root)
		root = p
	}
	m, err := modelFor(root.Type())
	return m, root, err
}
